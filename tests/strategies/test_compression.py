"""``compression``: coded messages are what the engines count, replies are decoded against
what each node received, and fine grids change nothing a run can see."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array

import fedsim
from fedsim.errors import ScenarioError
from fedsim.models import build_model
from fedsim.rounding import payload_bytes


def _run(tiny: dict[str, Any], path: Path, **compression: Any) -> fedsim.RunResult:
    tiny["compression"] = compression
    return fedsim.run(fedsim.load_scenario(tiny), path)


def _arrays(tiny: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    model = build_model("mlp", tiny["model"]["params"], (64,), 10)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_uplink_bytes_are_the_packed_payloads(tiny: dict[str, Any], tmp_path: Path) -> None:
    """bytes_up(rr4) = bytes_up(fp32) − replies · Σ_k (npy bytes − header − ⌈4 n_k / 8⌉).

    The float32 sizes are those of ``np.save`` (Flower's Array); the coded ones are the
    documented header plus 4 bits a coordinate. Downlink bytes do not change.
    """
    plain = _run(tiny, tmp_path / "fp32")
    coded = _run(tiny, tmp_path / "rr4", uplink={"method": "randomized-rounding", "bits": 4})
    saved = sum(
        len(Array(np.zeros(shape, np.float32)).data) - payload_bytes(int(np.prod(shape)), 4)
        for shape in _arrays(tiny).values()
    )
    for a, b in zip(plain.metrics[1:], coded.metrics[1:], strict=True):
        assert b["bytes_up"] == a["bytes_up"] - a["participants"] * saved
        assert b["bytes_down"] == a["bytes_down"]
    assert coded.summary["virtual_time_s"] < plain.summary["virtual_time_s"]  # smaller uploads


def test_fine_grids_both_ways_train_as_float32(tiny: dict[str, Any], tmp_path: Path) -> None:
    """16-bit randomized rounding up and down: the same losses to 1e-3, ~half the bytes."""
    plain = _run(tiny, tmp_path / "fp32")
    fine = {"method": "randomized-rounding", "bits": 16}
    coded = _run(tiny, tmp_path / "rr16", uplink=fine, downlink=fine)
    for a, b in zip(plain.metrics[1:], coded.metrics[1:], strict=True):
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-3)
        assert b["eval_loss"] != a["eval_loss"]  # it was coded (so decoded) all the same
        assert 0.45 < b["bytes_down"] / a["bytes_down"] < 0.6
        assert 0.45 < b["bytes_up"] / a["bytes_up"] < 0.6


def test_deterministic_runs(tiny: dict[str, Any], tmp_path: Path) -> None:
    rr2 = {"method": "randomized-rounding", "bits": 2}
    a = _run(tiny, tmp_path / "a", uplink=rr2, downlink=rr2)
    b = _run(tiny, tmp_path / "b", uplink=rr2, downlink=rr2)
    assert [r["eval_loss"] for r in a.metrics] == [r["eval_loss"] for r in b.metrics]


def test_strategies_with_their_own_loop_are_refused(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["strategy"] = {"name": "lasgd", "params": {}}
    with pytest.raises(ScenarioError, match="compression"):
        _run(tiny, tmp_path / "x", uplink={"method": "randomized-rounding"})
