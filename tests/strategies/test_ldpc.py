"""LDPC moment encoding: the coded step against the exact gradient step, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

import fedsim
from fedsim.algorithms.ldpc.client import MomentProductStep, linear_parameters
from fedsim.algorithms.ldpc.server import step_linear
from fedsim.client.steps import StepInputs
from fedsim.config.schema import DataConfig, Scenario
from fedsim.data.federated import federated_data
from fedsim.data.moments import moment_plan
from fedsim.data.node_data import node_data
from fedsim.erasure_code import peel
from fedsim.errors import ScenarioError
from fedsim.models import build_model

DATA = {
    "dataset": {"name": "regression", "num_samples": 300, "num_features": 7},
    "num_clients": 12,
    "moment_encoding": {"code": "ldpc", "column_weight": 2, "row_weight": 4},
}


def _exact_gradient(cfg: DataConfig, theta: np.ndarray) -> np.ndarray:
    """X̃ᵀ(X̃θ − y)/N in float64 from the raw training data (X̃ = [X, 1])."""
    data = federated_data(cfg, 0)
    xt = np.hstack([data.x.astype(np.float64), np.ones((len(data.y), 1))])
    return xt.T @ (xt @ theta - data.y.astype(np.float64)) / len(data.y)


@pytest.mark.parametrize("code", ["ldpc", "replication", "uncoded"])
def test_without_stragglers_the_coded_step_is_the_exact_gradient_step(code: str) -> None:
    encoding = {**DATA["moment_encoding"], "code": code}  # type: ignore[dict-item]
    cfg = DataConfig.model_validate({**DATA, "moment_encoding": encoding})
    plan = moment_plan(cfg, 0)
    model = build_model("linear", {}, (7,), 1)
    theta = linear_parameters(model).numpy()
    products = []
    for j in range(cfg.num_clients):  # each client's reply, as its step computes it
        step = MomentProductStep(
            StepInputs({}, model, data=node_data(cfg, 0, j, None), partition_id=j)
        )
        reply = step.reply(model, node_data(cfg, 0, j, None), None)
        assert reply.metrics == {"moment-block": j}
        products.append(reply.arrays["moment.product"])
    decoded = peel(plan.code, np.stack(products), np.ones(cfg.num_clients, dtype=bool))
    gradient = decoded.source.reshape(-1)[: plan.num_features] / plan.num_examples
    assert np.allclose(gradient, _exact_gradient(cfg, theta), rtol=0, atol=1e-10)
    arrays = ArrayRecord({k: Array(v.double().numpy()) for k, v in model.state_dict().items()})
    stepped = step_linear(arrays, gradient, 0.3)
    flat = np.concatenate([a.numpy().ravel() for a in stepped.values()])
    assert np.allclose(flat, theta - 0.3 * _exact_gradient(cfg, theta), rtol=0, atol=1e-10)


def test_a_straggler_is_recovered_by_the_code() -> None:
    """Losing an info client: peeling rebuilds its block from the parity clients."""
    cfg = DataConfig.model_validate(DATA)
    plan = moment_plan(cfg, 0)
    theta = np.random.default_rng(0).standard_normal(plan.num_features)
    coded = np.stack([b[:, :-1] @ theta - b[:, -1] for b in plan.blocks])
    received = np.ones(cfg.num_clients, dtype=bool)
    received[plan.code.info[0]] = False
    decoded = peel(plan.code, coded, received)
    assert decoded.missing.size == 0
    gradient = decoded.source.reshape(-1)[: plan.num_features] / plan.num_examples
    assert np.allclose(gradient, _exact_gradient(cfg, theta), atol=1e-9)


def _scenario(**overrides: object) -> Scenario:
    base = {
        "name": "ldpc-test",
        "rounds": 3,
        "data": DATA,
        "model": {"name": "linear"},
        "strategy": {"name": "ldpc", "params": {"lr": 0.5}},
        "output": {"plots": False},
    }
    return Scenario.model_validate({**base, **overrides})


@pytest.mark.parametrize(("lr", "scale"), [(0.5, 1.0), (0.25, 2.0)])
def test_run_takes_full_gradient_steps_and_reports_mse(
    lr: float, scale: float, tmp_path: Path
) -> None:
    """Without stragglers three rounds are three exact GD steps of size lr·scale.

    The server builds the initial model right after ``torch.manual_seed(seed)``; the
    arrays travel as float32 between rounds, hence the float32 rounding of the reference.
    ``gradient_scale`` multiplies the decoded gradient: lr 0.25 at scale 2 steps as 0.5.
    """
    params = {"lr": lr, "gradient_scale": scale}
    scenario = _scenario(strategy={"name": "ldpc", "params": params})
    result = fedsim.run(scenario, tmp_path)
    with np.load(tmp_path / "final_arrays.npz") as f:
        theta = np.concatenate([f[k].ravel().astype(np.float64) for k in f.files])
    assert result.summary["final_eval_accuracy"] is None
    losses = [m["eval_loss"] for m in result.metrics]
    assert result.summary["final_eval_loss"] == losses[-1] < losses[0]
    torch.manual_seed(scenario.seed)
    ref = linear_parameters(build_model("linear", {}, (7,), 1)).numpy()
    for _ in range(3):
        step = ref - lr * scale * _exact_gradient(scenario.data, ref)
        ref = step.astype(np.float32).astype(float)
    assert np.allclose(theta, ref, atol=1e-5)


def test_a_nonpositive_gradient_scale_is_a_scenario_error(tmp_path: Path) -> None:
    scenario = _scenario(strategy={"name": "ldpc", "params": {"gradient_scale": 0.0}})
    with pytest.raises(ScenarioError, match=r"strategy\.params"):
        fedsim.run(scenario, tmp_path)


def test_refused_under_dp_and_with_target_accuracy() -> None:
    from fedsim.compose import combination_problems as check_combinations

    keys = [p.key for p in check_combinations(_scenario(client={"dp": {}}))]
    assert "client.dp" in keys
    keys = [p.key for p in check_combinations(_scenario(output={"target_accuracy": 0.5}))]
    assert keys == ["output.target_accuracy"]
    keys = [p.key for p in check_combinations(_scenario(output={"class_recall": True}))]
    assert keys == ["output.class_recall"]
    with pytest.raises(ScenarioError, match="moment_encoding"):
        moment_plan(DataConfig.model_validate({**DATA, "dataset": "digits"}), 0)


def test_deployed_devices_read_their_block_and_npz_regression_targets(tmp_path: Path) -> None:
    """`fedsim deploy split` files carry the coded block; an npz with float targets loads."""
    from fedsim.data.node_data import write_partitions

    cfg = DataConfig.model_validate(DATA)
    paths = write_partitions(cfg, 0, tmp_path / "parts")
    read = node_data(cfg, 0, 3, str(paths[3]))
    assert read.moments is not None
    assert np.array_equal(read.moments, moment_plan(cfg, 0).blocks[3])
    assert read.y.dtype == np.float32
    data = federated_data(cfg, 0)
    np.savez(tmp_path / "reg.npz", x=data.x, y=data.y.astype(np.float64))
    npz = DataConfig.model_validate(
        {**DATA, "dataset": {"name": "npz", "path": str(tmp_path / "reg.npz"), "targets": "values"}}
    )
    assert moment_plan(npz, 0).num_examples == round(0.8 * len(data.y))


def test_regression_targets_need_label_free_partitions_and_squared_error() -> None:
    from fedsim.compose import combination_problems as check_combinations

    with pytest.raises(ScenarioError, match="needs one class label"):
        federated_data(DataConfig.model_validate({**DATA, "partitioner": {"name": "dirichlet"}}), 0)
    fedavg = _scenario(strategy={"name": "fedavg"}, data={**DATA, "moment_encoding": None})
    assert [p.key for p in check_combinations(fedavg)] == ["client.loss"]
    fixed = _scenario(
        strategy={"name": "fedavg"},
        data={**DATA, "moment_encoding": None},
        client={"loss": "squared_error"},
    )
    assert check_combinations(fixed) == []


def test_strategy_needs_the_encoding_and_a_linear_model() -> None:
    from fedsim.compose import combination_problems as check_combinations

    bad = _scenario(model={"name": "mlp"}, data={**DATA, "moment_encoding": None})
    keys = {p.key for p in check_combinations(bad)}
    assert {"data.moment_encoding", "model.name"} <= keys
    encoding = {"code": "ldpc", "column_weight": 3, "row_weight": 7}  # 36 sockets, not 7k
    misfit = _scenario(data={**DATA, "moment_encoding": encoding})
    assert [p.key for p in check_combinations(misfit)] == ["data.moment_encoding"]


def test_federated_evaluation_of_regression_reports_the_mse(tmp_path: Path) -> None:
    """fraction_evaluate > 0: clients score the model on their own data (MSE, no accuracy)."""
    scenario = _scenario(
        rounds=1,
        strategy={"name": "ldpc", "params": {"lr": 0.5, "fraction_evaluate": 1.0}},
    )
    result = fedsim.run(scenario, tmp_path)
    assert result.summary["final_eval_loss"] is not None
    assert result.summary["failures"] == 0  # no client failed to evaluate


def test_resume_ends_like_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decoder's code lives in checkpointable attributes: a resumed run ends the same."""
    from fedsim import server
    from tests.conftest import same_final_arrays, strip_wall_clock

    scenario = _scenario(
        rounds=4,
        system={"straggle_prob": 0.3, "seconds_per_sample": 1.0, "deadline_s": 6.0},
        output={"plots": False, "checkpoint_every": 2},
    )
    whole = fedsim.run(scenario, tmp_path / "whole")
    original = server.RoundRecorder.__call__

    def dies_in_round_3(self: object, server_round: int, arrays: object) -> object:
        if server_round == 3:
            raise KeyboardInterrupt("killed")
        return original(self, server_round, arrays)  # type: ignore[arg-type]

    monkeypatch.setattr(server.RoundRecorder, "__call__", dies_in_round_3)
    with pytest.raises(KeyboardInterrupt):
        fedsim.run(scenario, tmp_path / "crashed")
    monkeypatch.setattr(server.RoundRecorder, "__call__", original)
    resumed = fedsim.resume(tmp_path / "crashed")
    assert strip_wall_clock(resumed.metrics) == strip_wall_clock(whole.metrics)
    assert same_final_arrays(resumed.run_dir, whole.run_dir)
