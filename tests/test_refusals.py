"""Every refusal: ``fedsim validate`` and ``fedsim run`` refuse the same scenarios, alike.

Each case changes a tiny valid scenario so that one check refuses it: a combination
rule, a strategy's own check, a component's name or parameter, a strategy that cannot
be built (``curv_lambda: -1``). Both commands must exit 2 with the same one error line,
and ``run`` must refuse before it claims a run directory. Every registered combination
rule has a case (a new rule without one fails here). Then: a scenario is validated
once per process, however many times it is loaded, preflighted and served.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import fedsim
from fedsim.cli.main import app
from fedsim.config.rules import RULES
from tests.conftest import TINY, write_yaml

DP = {"dp": {"noise_multiplier": 1.0}}
REGRESSION = {"dataset": {"name": "regression"}, "num_clients": 4, "partitioner": {"name": "iid"}}

# id -> (what it exercises, scenario changes, the key the error line names)
CASES: dict[str, tuple[str, dict[str, Any], str]] = {
    "alie-with-lasgd": (
        "colluding-attacks",
        {
            "strategy": {"name": "lasgd"},
            "system": {"attackers": {"fraction": 0.25, "attack": "alie"}},
        },
        "system.attackers.attack",
    ),
    "krum-more-attackers-than-clients": (
        "attacker-count",
        {"strategy": {"name": "krum", "params": {"num_malicious_nodes": 100}}},
        "strategy.params.num_malicious_nodes",
    ),
    "client-timeout-on-ray": (
        "client-timeout",
        {"engine": {"name": "ray", "client_timeout_s": 2.0}},
        "engine.client_timeout_s",
    ),
    "curv-lambda-negative": (
        "typed-params",
        {"strategy": {"name": "fedcurv", "params": {"curv_lambda": -1}}},
        "strategy.params.curv_lambda",
    ),
    "typed-param-wrong-type": (
        "typed-params",
        {"strategy": {"name": "agc", "params": {"p": "0.3"}}},
        "strategy.params.p",
    ),
    "typed-param-not-a-choice": (
        "typed-params",
        {"strategy": {"name": "scaffold", "params": {"option": "III"}}},
        "strategy.params.option",
    ),
    "typed-param-of-an-inner-strategy": (
        "typed-params",
        {
            "strategy": {
                "name": "median-of-means",
                "params": {"strategy": {"name": "fedcurv", "params": {"curv_lambda": -1}}},
            }
        },
        "strategy.params.strategy.params.curv_lambda",
    ),
    "fedaws-federated-evaluation": (
        "typed-params",
        {
            "strategy": {"name": "fedaws", "params": {"fraction_evaluate": 0.5}},
            "model": {"name": "cosine", "params": {}},
            "data": {**TINY["data"], "num_clients": 10, "partitioner": {"name": "one-class"}},
        },
        "strategy.params.fraction_evaluate",
    ),
    "dp-fedcurv": ("dp-releases", {"strategy": {"name": "fedcurv"}, "client": DP}, "client.dp"),
    "dp-agc": ("dp-releases", {"strategy": {"name": "agc"}, "client": DP}, "client.dp"),
    "dp-qfedavg-loss-weights": (
        "dp-releases",
        {"strategy": {"name": "qfedavg", "params": {"client_learning_rate": 0.1}}, "client": DP},
        "client.dp",
    ),
    "dp-federated-evaluation": (
        "dp-releases",
        {"strategy": {"name": "fedavg", "params": {"fraction_evaluate": 0.5}}, "client": DP},
        "client.dp",
    ),
    "dp-inner-strategy": (
        "dp-releases",
        {
            "strategy": {"name": "median-of-means", "params": {"strategy": {"name": "fedcurv"}}},
            "client": DP,
        },
        "client.dp",
    ),
    "squared-error-on-labels": (
        "regression-targets",
        {"client": {"loss": {"name": "squared_error"}}},
        "client.loss",
    ),
    "accuracy-target-on-regression": (
        "regression-targets",
        {"data": REGRESSION, "client": {"loss": {"name": "squared_error"}}},
        "output.target_accuracy",
    ),
    "lasgd-without-a-clock": (
        "engine-needs",
        {"strategy": {"name": "lasgd"}, "engine": {"name": "ray"}},
        "engine.name",
    ),
    "fedaws-needs-cosine": (
        "strategy-checks",
        {
            "strategy": {"name": "fedaws"},
            "data": {**TINY["data"], "num_clients": 10, "partitioner": {"name": "one-class"}},
        },
        "model.name",
    ),
    "scaffold-option-i-under-dp": (
        "strategy-checks",
        {"strategy": {"name": "scaffold", "params": {"option": "I"}}, "client": DP},
        "strategy.params.option",
    ),
    "fednova-with-momentum": (
        "strategy-checks",
        {
            "strategy": {"name": "fednova"},
            "client": {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}},
        },
        "client.optimizer.momentum",
    ),
    "unknown-strategy": ("components", {"strategy": {"name": "fedavgg"}}, "strategy.name"),
    "unknown-strategy-param": (
        "components",
        {"strategy": {"name": "fedavg", "params": {"fraction_trian": 0.5}}},
        "strategy.params.fraction_trian",
    ),
    "unknown-inner-strategy": (
        "components",
        {"strategy": {"name": "median-of-means", "params": {"strategy": {"name": "nope"}}}},
        "strategy.params.strategy.name",
    ),
    "unknown-model": ("components", {"model": {"name": "mlpp"}}, "model.name"),
    "population-too-small": (
        "population",
        {"strategy": {"name": "fedavg", "params": {"min_available_nodes": 9}}},
        "strategy.params.min_available_nodes",
    ),
    # Checks that need the data (the runner's preflight, which validate makes too).
    "more-clients-than-examples": (
        "data",
        {"data": {**TINY["data"], "num_clients": 5000}},
        "data.num_clients",
    ),
    "agc-holders-beyond-the-population": (
        "data",
        {
            "strategy": {"name": "agc"},
            "data": {**TINY["data"], "sharing": {"c": 0.1, "d": 5}},
        },
        "data.sharing",
    ),
    "per-client-eval-without-client-test-data": (
        "data",
        {"output": {"plots": False, "per_client_eval": True}},
        "output.per_client_eval",
    ),
    "checkpoint-own-loop": (
        "checkpoints",
        {"strategy": {"name": "lasgd"}, "output": {"plots": False, "checkpoint_every": 1}},
        "output.checkpoint_every",
    ),
}


def _scenario(tmp_path: Path, changes: dict[str, Any]) -> Path:
    raw: dict[str, Any] = {**TINY, "name": f"refusal-{uuid.uuid4().hex[:8]}", "system": {}}
    for section, value in changes.items():
        base = raw.get(section)
        raw[section] = (
            {**base, **value} if isinstance(base, dict) and section != "strategy" else value
        )
    return write_yaml(tmp_path / "s.yaml", raw)


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error")]


def _refused_alike(path: Path, run_dir: Path) -> str:
    """Both commands exit 2 with the same one error line, before a run directory exists."""
    runner = CliRunner()
    validate = runner.invoke(app, ["validate", str(path)])
    run = runner.invoke(app, ["run", str(path), "-q", "--out", str(run_dir)])
    assert validate.exit_code == 2, validate.output
    assert run.exit_code == 2, run.output
    assert "Traceback" not in validate.output + run.output
    assert _errors(validate.output) == _errors(run.output), (validate.output, run.output)
    assert len(_errors(run.output)) == 1, run.output
    assert not run_dir.exists()  # refused before a run directory was claimed
    return _errors(run.output)[0]


def test_every_rule_has_a_case() -> None:
    exercised = {what for what, _, _ in CASES.values()}
    assert set(RULES.names()) <= exercised


@pytest.mark.parametrize("case", sorted(CASES))
def test_validate_and_run_refuse_alike(case: str, tmp_path: Path) -> None:
    _, changes, key = CASES[case]
    assert f"{key}:" in _refused_alike(_scenario(tmp_path, changes), tmp_path / "run")


def test_a_scenario_is_validated_once_per_process(tmp_path: Path) -> None:
    from fedsim.compose import CHECKS_RUN, digest

    raw = {**TINY, "name": f"once-{uuid.uuid4().hex[:8]}", "system": {}}
    scenario = fedsim.load_scenario(raw)
    fedsim.load_scenario(raw)  # loaded again, as `validate` then `run` would
    fedsim.run(scenario, tmp_path / "run")  # preflight and the in-process ServerApp
    assert CHECKS_RUN[digest(scenario)] == 1


# Plain `register_strategy` classes (no spec) whose clients would run a step that refuses
# client.dp, or one that no module registered: old plugin code (a `client_step` class
# attribute) and code that only says so in configure_train.
PLAIN_STRATEGIES = """
import fedsim
from flwr.serverapp.strategy import FedAvg


@fedsim.register_strategy("legacy-curvature-TAG")
class LegacyCurvature(FedAvg):
    client_step = "curvature"  # how plugins declared their step before specs

    def configure_train(self, server_round, arrays, config, grid):
        config["local-step"] = self.client_step
        config["curv-lambda"] = 0.1
        return super().configure_train(server_round, arrays, config, grid)


@fedsim.register_strategy("sends-curvature-TAG")
class SendsCurvature(FedAvg):
    def configure_train(self, server_round, arrays, config, grid):
        config["curv-lambda"] = 0.1  # the curvature step's trigger key
        return super().configure_train(server_round, arrays, config, grid)


@fedsim.register_strategy("sends-unknown-TAG")
class SendsUnknown(FedAvg):
    def configure_train(self, server_round, arrays, config, grid):
        config["local-step"] = "no-such-step"
        return super().configure_train(server_round, arrays, config, grid)
"""


@pytest.mark.parametrize(
    ("strategy", "dp", "line"),
    [
        (
            "legacy-curvature",
            True,
            "client.dp: cannot be used with strategy 'legacy-curvature-TAG': its clients "
            "run local step 'curvature': fedcurv clients upload",
        ),
        (
            "sends-curvature",
            True,
            "client.dp: cannot be used with strategy 'sends-curvature-TAG': its clients run "
            "local step 'curvature': fedcurv clients upload",
        ),
        (
            "sends-unknown",
            False,
            "strategy.name: algorithm 'sends-unknown-TAG' names local step 'no-such-step', "
            "which no module registered",
        ),
    ],
)
def test_a_plain_strategys_refused_step_is_caught_before_training(
    strategy: str, dp: bool, line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = uuid.uuid4().hex[:8]
    module = f"plain_strategies_{tag}"
    (tmp_path / f"{module}.py").write_text(PLAIN_STRATEGIES.replace("TAG", tag))
    monkeypatch.syspath_prepend(str(tmp_path))
    changes: dict[str, Any] = {"strategy": {"name": f"{strategy}-{tag}"}}
    if dp:
        changes["client"] = DP
    path = _scenario(tmp_path, changes)
    text = path.read_text().replace("name: refusal", f"plugins: [{module}]\nname: refusal", 1)
    path.write_text(text)
    assert line.replace("TAG", tag) in _refused_alike(path, tmp_path / "run")
    if dp:  # without DP the same strategy validates: the probe refuses only the step's refusal
        changes.pop("client")
        plain = _scenario(tmp_path, changes)
        plain.write_text(
            plain.read_text().replace("name: refusal", f"plugins: [{module}]\nname: refusal", 1)
        )
        assert CliRunner().invoke(app, ["validate", str(plain)]).exit_code == 0


def test_a_data_check_of_a_strategy_is_refused_by_validate_and_run_alike(
    tmp_path: Path,
) -> None:
    """FedAwS needs one class per client; under a natural partition only the loaded data
    can say (client 3 below holds two): once found only in the running ServerApp."""
    import numpy as np

    rng = np.random.default_rng(0)
    ids = np.repeat([f"u{k}" for k in range(4)], 10)
    labels = np.array([0] * 10 + [1] * 10 + [2] * 10 + [3] * 5 + [0] * 5)
    np.savez(
        tmp_path / "natural.npz",
        x=rng.random((40, 1, 8, 8), dtype=np.float32),
        y=labels,
        client_id=ids,
        x_test=rng.random((8, 1, 8, 8), dtype=np.float32),
        y_test=np.array([0, 1, 2, 3] * 2),
    )
    data = {
        "dataset": f"npz:{tmp_path / 'natural.npz'}",
        "num_clients": 4,
        "partitioner": "natural",
    }
    path = _scenario(
        tmp_path,
        {"data": data, "model": {"name": "cosine", "params": {}}, "strategy": {"name": "fedaws"}},
    )
    line = _refused_alike(path, tmp_path / "run")
    assert "data.partitioner: fedaws needs one class per client" in line
    assert "client 3 holds labels [0, 3]" in line
