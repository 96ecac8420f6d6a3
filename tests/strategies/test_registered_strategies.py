"""Every registered strategy runs a round through the in-process grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import fedsim
from fedsim.strategies import STRATEGIES

# Parameters some strategies need to make sense on 4 clients.
PARAMS: dict[str, dict[str, Any]] = {
    "fedprox": {"proximal_mu": 0.01},
    "krum": {"num_malicious_nodes": 1},
    "multikrum": {"num_malicious_nodes": 1, "num_nodes_to_select": 2},
    "bulyan": {"num_malicious_nodes": 0},
    "fedtrimmedavg": {"beta": 0.25},
    "qfedavg": {"client_learning_rate": 0.1},
}
# Strategies that need a particular model or split (one-class needs a client per class).
SCENARIO: dict[str, dict[str, Any]] = {
    "fedaws": {
        "data": {"dataset": "digits", "num_clients": 10, "partitioner": "one-class"},
        "model": {"name": "cosine"},
    },
    "ldpc": {
        "data": {
            "dataset": {"name": "regression", "num_samples": 100, "num_features": 3},
            "num_clients": 4,
            "moment_encoding": {"code": "replication"},
        },
        "model": {"name": "linear"},
        "output": {"plots": False},  # no target_accuracy: least squares has no accuracy
    },
}


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_strategy_runs(name: str, tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["rounds"] = 1
    tiny["strategy"] = {"name": name, "params": PARAMS.get(name, {})}
    tiny.update(SCENARIO.get(name, {}))
    result = fedsim.run(fedsim.load_scenario(tiny), tmp_path)
    # Every client trained: once per round, or (asynchronous LASGD) at least once in the
    # first evaluation interval.
    assert result.metrics[-1]["participants"] >= tiny["data"]["num_clients"]
    if name == "ldpc":  # least squares: a test MSE, no accuracy
        assert result.summary["final_eval_loss"] is not None
    else:
        assert result.summary["final_eval_accuracy"] is not None
