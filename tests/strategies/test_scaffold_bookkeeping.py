"""SCAFFOLD's invariant c = (1/N) Σ_i c_i under stragglers, dropouts, failures and sampling.

A client's c_i+ takes effect only once the server has added its Δc_i to c (commit on
confirmation). The check runs inside the server after every round's aggregation: it
reads every node's ``context.state`` from the grid (in this process, or fetched from
the worker processes) and works out each node's c_i by this test's own rule: the
pending c_i+ if the server added that round's Δc_i from the node, else the committed
c_i, else zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

import fedsim
from fedsim.algorithms.scaffold.client import KEPT_C, PENDING_C, PENDING_ROUND
from fedsim.algorithms.scaffold.server import Scaffold
from fedsim.strategies import register_strategy


def effective_c_i(state: RecordDict | None, confirmed: int) -> dict[str, np.ndarray]:
    """The control variate a node would train with next (empty: all zeros)."""
    if state is None:
        return {}
    if PENDING_C in state.array_records:
        trained_in = int(state.config_records[PENDING_ROUND]["round"])  # type: ignore[arg-type]
        if trained_in == confirmed:
            record = state.array_records[PENDING_C]
            return {k: v.numpy().astype(np.float64) for k, v in record.items()}
    if KEPT_C in state.array_records:
        return {k: v.numpy().astype(np.float64) for k, v in state.array_records[KEPT_C].items()}
    return {}


@register_strategy("test-checked-scaffold")
class CheckedScaffold(Scaffold):
    """SCAFFOLD that measures max |c - mean c_i| / max(1, max|c|) after every round."""

    gaps: ClassVar[list[float]] = []
    late: ClassVar[list[int]] = []  # replies per round that never reached c

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        states: dict[int, RecordDict] = grid.engine_state()["node_states"]  # type: ignore[attr-defined]
        nodes = list(grid.get_node_ids())
        worst = 0.0
        for name, c in self.c.items():
            total = np.zeros_like(c)
            for node in nodes:
                mine = effective_c_i(states.get(node), self.confirmed.get(str(node), 0))
                total += mine.get(name, 0.0)
            scale = max(1.0, float(np.abs(c).max()))
            worst = max(worst, float(np.abs(c - total / len(nodes)).max()) / scale)
        type(self).gaps.append(worst)
        return super().configure_evaluate(server_round, arrays, config, grid)


@pytest.mark.parametrize("workers", [1, 2])
def test_c_is_the_mean_of_the_clients_control_variates_after_every_round(
    tiny: dict[str, Any], tmp_path: Path, workers: int
) -> None:
    """20% deadline stragglers, 10% dropouts, 10% failures and half the nodes per round:
    many trained c_i+ never reach c, and c still equals the mean c_i after every round."""
    CheckedScaffold.gaps.clear()
    tiny["rounds"] = 6
    tiny["data"].update(num_clients=10, partitioner={"name": "pathological"})
    tiny["client"] = {
        "local_steps": 5,
        "batch_size": 16,
        "optimizer": {"name": "sgd", "lr": 0.1},
    }
    tiny["strategy"] = {
        "name": "test-checked-scaffold",
        "params": {"option": "II", "fraction_train": 0.5, "min_available_nodes": 2},
    }
    tiny["system"] = {
        "straggle_prob": 0.2,
        "straggle_slowdown": 100.0,
        "dropout_prob": 0.1,
        "failure_prob": 0.1,
        "deadline_s": 1.0,
    }
    tiny["engine"] = {"workers": workers}
    result = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "run")
    assert len(CheckedScaffold.gaps) == tiny["rounds"]
    assert max(CheckedScaffold.gaps) < 1e-6, CheckedScaffold.gaps
    # The faults did fire: some sampled replies never reached the server.
    lost = sum(r.get("dropouts", 0) + r.get("failures", 0) for r in result.metrics)
    assert lost > 0, result.metrics[-1]
