"""The LSTM recurrence route tables refuse what they cannot run, naming the choices."""

from __future__ import annotations

import pytest
import torch

from fedsim.kernels.recurrence_routes import DP_RECURRENCE, LOOP_RECURRENCE, LayerPass, run_layer


@pytest.mark.parametrize(
    ("table", "capture", "route"),
    [(LOOP_RECURRENCE, None, "cudnn-gates"), (DP_RECURRENCE, {}, "no-such-route")],
    ids=["loop-needs-no-capture-route", "unknown"],
)
def test_a_route_table_naming_a_wrong_route_is_refused_with_the_choices(
    table: dict[str, str], capture: dict | None, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(table, "cpu", route)
    gx, h0 = torch.zeros(2, 1, 4), torch.zeros(1, 1)
    layer = LayerPass(gx, torch.zeros(1, 2, 1), h0, h0, (torch.zeros(4, 1),) * 4, capture)
    with pytest.raises(ValueError, match=rf"\['cpu'\] = '{route}'; choose one of step-loop"):
        run_layer(layer)
