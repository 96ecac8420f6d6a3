"""User strategies plug in by decorator name or by import path (docs/write-a-strategy.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import fedsim


def _final(result: fedsim.RunResult) -> dict[str, np.ndarray]:
    with np.load(result.run_dir / "final_arrays.npz") as f:
        return {k: f[k] for k in f.files}


def test_import_path_and_decorator(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["strategy"] = {
        "name": "fedsim_examples.server_lr_fedavg:ServerLrFedAvg",
        "params": {"eta": 1.0},
    }
    by_path = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "a")
    # Importing the module registered the decorator name.
    tiny["strategy"] = {"name": "server-lr-fedavg", "params": {"eta": 1.0}}
    by_name = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "b")
    tiny["strategy"] = {"name": "fedavg"}
    fedavg = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "c")
    # eta = 1 is FedAvg, bit for bit.
    for k, v in _final(fedavg).items():
        assert np.array_equal(_final(by_path)[k], v) and np.array_equal(_final(by_name)[k], v)


def test_server_step_changes_the_model(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["rounds"] = 1
    tiny["strategy"] = {
        "name": "fedsim_examples.server_lr_fedavg:ServerLrFedAvg",
        "params": {"eta": 0.5},
    }
    half = _final(fedsim.run(fedsim.load_scenario(tiny), tmp_path / "h"))
    tiny["strategy"] = {"name": "fedavg"}
    full = _final(fedsim.run(fedsim.load_scenario(tiny), tmp_path / "f"))
    tiny["rounds"] = 1
    # Initial weights: the same seed builds the same model; one round moved by half as much.
    import torch

    from fedsim.data.federated import federated_data
    from fedsim.models import build_model

    s = fedsim.load_scenario(tiny)
    torch.manual_seed(s.seed)
    data = federated_data(s.data, s.seed)
    init = build_model(s.model.name, s.model.params, data.input_shape, data.num_classes)
    for k, w0 in init.state_dict().items():
        np.testing.assert_allclose(half[k], w0.numpy() + 0.5 * (full[k] - w0.numpy()), atol=1e-6)


def test_bad_params_are_scenario_errors(tiny: dict[str, Any]) -> None:
    tiny["strategy"] = {
        "name": "fedsim_examples.server_lr_fedavg:ServerLrFedAvg",
        "params": {"etta": 1},
    }
    try:
        fedsim.load_scenario(tiny)
    except fedsim.ScenarioError as exc:
        assert exc.problems[0].key == "strategy.params.etta"
    else:
        raise AssertionError("no error")


def test_fedsim_defaults_reach_strategies_that_forward_kwargs() -> None:
    from fedsim.compose.strategy import build_strategy

    scenario = fedsim.load_scenario(
        {"name": "x", "strategy": {"name": "fedsim_examples.server_lr_fedavg:ServerLrFedAvg"}}
    )
    strategy = build_strategy(scenario)
    assert strategy.fraction_evaluate == 0.0  # type: ignore[attr-defined]
    assert strategy.min_available_nodes == scenario.data.num_clients  # type: ignore[attr-defined]
