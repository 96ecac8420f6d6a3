"""Every local step under client.dp is private in all it releases, or refused first.

A private step's release (the model it uploads) must change with the DP noise draw,
and ε must be positive once anything was released; a step that releases anything
else (a Fisher diagonal, an unclipped coded gradient, the label set) is refused by
validation, naming ``client.dp`` and the strategy, before anything trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import fedsim
import fedsim.client.app
from fedsim.client.dp import PrivateGradient
from fedsim.client.steps import STEPS
from fedsim.config.schema import Scenario

DP = {"noise_multiplier": 1.0, "max_grad_norm": 1.0}
# Every registered step, with the scenario changes that make a strategy ask for it.
BY_STEP: dict[str, dict[str, Any]] = {
    "plain": {"strategy": {"name": "fedavg"}},
    "proximal": {"strategy": {"name": "fedprox", "params": {"proximal_mu": 0.1}}},
    "curvature": {"strategy": {"name": "fedcurv", "params": {"curv_lambda": 0.5}}},
    "scaffold": {"strategy": {"name": "scaffold"}},  # option II: from the private update
    "fednova": {"strategy": {"name": "fednova"}},  # reports its step count alongside
    "demlearn": {"strategy": {"name": "demlearn", "params": {"groups": []}}},  # refused
    "coded-gradient": {"strategy": {"name": "agc", "params": {"c": 0.1, "d": 2}}},
    "moment-product": {
        "strategy": {"name": "ldpc"},
        "model": {"name": "linear"},
        "data": {
            "dataset": {"name": "regression", "num_samples": 200, "num_features": 4},
            "num_clients": 4,
            "moment_encoding": {"code": "uncoded"},
        },
    },
    "positive-only": {
        "strategy": {"name": "fedaws"},
        "model": {"name": "cosine", "params": {"backbone": "mlp", "embedding_dim": 8}},
        "data": {"dataset": "digits", "num_clients": 10, "partitioner": "one-class"},
    },
}


def _scenario(tiny: dict[str, Any], step: str) -> dict[str, Any]:
    tiny["rounds"] = 1
    tiny["client"]["dp"] = dict(DP)
    for key, value in BY_STEP[step].items():
        tiny[key] = value
    tiny["strategy"].setdefault("params", {})["fraction_train"] = 1.0
    return tiny


def test_every_registered_step_is_covered() -> None:
    """A new step must say here how it behaves under DP."""
    assert set(STEPS.names()) == set(BY_STEP)


@pytest.mark.parametrize("step", sorted(BY_STEP))
def test_step_under_dp_is_private_or_refused(
    step: str, tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _scenario(tiny, step)
    refusal = STEPS.get(step).dp_refusal
    if refusal is not None:
        with pytest.raises(fedsim.ScenarioError) as info:
            fedsim.load_scenario(raw)
        line = str(info.value)
        assert "client.dp" in line and raw["strategy"]["name"] in line
        return
    scenario = fedsim.load_scenario(raw)
    first = fedsim.run(scenario, tmp_path / "a")

    class OtherNoise(PrivateGradient):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.generator = torch.Generator().manual_seed(12345)

    monkeypatch.setattr(fedsim.client.job, "PrivateGradient", OtherNoise)
    second = fedsim.run(scenario, tmp_path / "b")
    with (
        np.load(first.run_dir / "final_arrays.npz") as a,
        np.load(second.run_dir / "final_arrays.npz") as b,
    ):
        assert any(not np.array_equal(a[k], b[k]) for k in a.files)  # the noise is in it
    for result in (first, second):
        assert result.summary["epsilon"] is not None and result.summary["epsilon"] > 0
        assert all(r.get("train_loss") is None for r in result.metrics)  # loss stays home


def test_a_scenario_that_skipped_validation_is_still_refused(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """Built without validation (as a caller of the Python API might): the apps that
    load the resolved scenario validate it again before any client trains."""
    scenario = Scenario.model_validate(_scenario(tiny, "curvature"))
    with pytest.raises(fedsim.ScenarioError, match=r"client\.dp: .*fedcurv"):
        fedsim.run(scenario, tmp_path)
    assert not (tmp_path / "final_arrays.npz").exists()


def test_federated_evaluation_and_loss_weighted_strategies_are_refused(
    tiny: dict[str, Any],
) -> None:
    raw = _scenario(tiny, "plain")
    raw["strategy"]["params"]["fraction_evaluate"] = 0.5
    with pytest.raises(fedsim.ScenarioError, match=r"client\.dp.*federated evaluation"):
        fedsim.load_scenario(raw)
    raw["strategy"]["params"]["fraction_evaluate"] = 0.0
    raw["output"]["per_client_eval"] = True
    with pytest.raises(fedsim.ScenarioError, match=r"client\.dp.*per_client_eval"):
        fedsim.load_scenario(raw)
    raw["output"]["per_client_eval"] = False
    raw["strategy"] = {"name": "qfedavg", "params": {}}
    with pytest.raises(fedsim.ScenarioError, match=r"client\.dp.*qfedavg.*training loss"):
        fedsim.load_scenario(raw)


def test_no_steps_means_no_epsilon() -> None:
    """ε is 0 until a DP step is taken (the RDP conversion alone would say ≈ 0.1)."""
    from flwr.app import RecordDict

    from fedsim.client.dp import spend
    from fedsim.config.schema import DPConfig

    state = RecordDict()
    assert spend(state, DPConfig(), n=100, batch=10, steps=0) == 0.0
    assert spend(state, DPConfig(), n=100, batch=10, steps=1) > 0.0


def test_a_wrapped_strategy_is_checked_too(tiny: dict[str, Any]) -> None:
    """median-of-means around fedcurv: the clients still run fedcurv's step."""
    raw = _scenario(tiny, "plain")
    raw["strategy"] = {
        "name": "median-of-means",
        "params": {"blocks": 2, "strategy": {"name": "fedcurv", "params": {}}},
    }
    with pytest.raises(fedsim.ScenarioError, match=r"client\.dp: .*'fedcurv'"):
        fedsim.load_scenario(raw)


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_loss_counted_on_private_labels_is_refused_under_dp(
    tiny: dict[str, Any], tmp_path: Path, command: str
) -> None:
    """logit_adjusted with prior: own reads the private label counts: exit 2 naming
    client.dp and client.loss.prior, one line, in validate and in run alike."""
    from typer.testing import CliRunner

    from fedsim.cli.main import app
    from tests.conftest import write_yaml

    raw = _scenario(tiny, "plain")
    raw["client"]["loss"] = {"name": "logit_adjusted", "prior": "own"}
    path = write_yaml(tmp_path / "s.yaml", raw)
    args = [command, str(path)] + (["--out", str(tmp_path / "run")] if command == "run" else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if "client.loss.prior" in line]
    assert len(lines) == 1 and "client.dp" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_logit_adjusted_with_the_global_prior_stays_allowed_under_dp(
    tiny: dict[str, Any],
) -> None:
    raw = _scenario(tiny, "plain")
    raw["client"]["loss"] = {"name": "logit_adjusted", "prior": "global"}
    fedsim.load_scenario(raw)  # the global counts are public: nothing to refuse


def test_the_accountant_counts_releases_that_never_reached_the_server(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """A deadline straggler's reply is sent (an observer of the link sees it) though the
    server drops it, so its privacy is spent: the ledger is never rolled back. With
    every node sampled each round and stragglers but no dropouts or failures, every
    node's ledger holds one entry per round while fewer replies were aggregated."""
    from fedsim.client.app import app as client_app
    from fedsim.client.dp import LEDGER
    from tests.conftest import run_with_client_app

    raw = _scenario(tiny, "plain")
    raw["rounds"] = 2
    raw["system"].update(straggle_prob=0.5, straggle_slowdown=100.0, deadline_s=1.0)
    scenario = fedsim.load_scenario(raw)
    grid = run_with_client_app(scenario, client_app, tmp_path / "run")
    states = grid.engine_state()["node_states"]
    assert len(states) == raw["data"]["num_clients"]
    for state in states.values():
        assert len(state.config_records[LEDGER]["steps"]) == raw["rounds"]
    import json

    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    aggregated = sum(json.loads(line).get("participants") or 0 for line in lines)
    assert aggregated > 0
    assert aggregated < raw["rounds"] * raw["data"]["num_clients"]
