"""Malformed scenarios: one line per problem naming the key, exit code 2, no traceback."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedsim.cli.main import app
from tests.conftest import TINY, write_yaml


def _with(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(TINY)
    node = data
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return data


def _without(section: str, key: str) -> dict[str, Any]:
    data = copy.deepcopy(TINY)
    del data[section][key]
    return data


# (case id, scenario mapping, text that must appear in the error line)
CASES: list[tuple[str, Any, str]] = [
    ("typo-top-level", _with("roundz", 3), "roundz: unknown key (did you mean 'rounds'?)"),
    (
        "typo-depth-2",
        _with("data.num_client", 3),
        "data.num_client: unknown key (did you mean 'num_clients'?)",
    ),
    (
        "typo-depth-3",
        _with("client.optimizer.lrr", 0.1),
        "client.optimizer.lrr: unknown key (did you mean 'lr'?)",
    ),
    (
        "typo-in-union",
        _with("data.partitioner", {"name": "dirichlet", "alpah": 1}),
        "data.partitioner.alpah: unknown key (did you mean 'alpha'?)",
    ),
    ("wrong-type", _with("rounds", "ten"), "rounds: Input should be a valid integer"),
    (
        "wrong-type-nested",
        _with("client.batch_size", [32]),
        "client.batch_size: Input should be a valid integer",
    ),
    ("out-of-range", _with("rounds", 0), "rounds: Input should be greater than or equal to 1"),
    (
        "probability>1",
        _with("system.straggle_prob", 1.5),
        "system.straggle_prob: Input should be less than or equal to 1",
    ),
    (
        "uniform-order",
        _with("system.speed", {"distribution": "uniform", "low": 2, "high": 1}),
        "system.speed: Value error, high must be >= low",
    ),
    (
        "unknown-strategy",
        _with("strategy.name", "fedavgg"),
        "strategy.name: unknown strategy: 'fedavgg' is not one of:",
    ),
    (
        "unknown-model",
        _with("model.name", "resnet"),
        "model.name: unknown model: 'resnet' is not one of: charlm, cnn, cnn1d, cosine, "
        "femnist-cnn, linear, lstm, mlp, resnet-gn",
    ),
    (
        "unknown-dataset",
        _with("data.dataset", "cifar11"),
        "data.dataset: unknown dataset: 'cifar11' is not one of: cifar, digits, hf, leaf, "
        "mnist1d, npz",
    ),
    (
        "unknown-partitioner",
        _with("data.partitioner", {"name": "dirichlett"}),
        "(did you mean 'dirichlet'?)",
    ),
    (
        "unknown-distribution",
        _with("system.speed", {"distribution": "gamma"}),
        "system.speed: unknown distribution: 'gamma' is not one of: constant, lognormal, trace, uniform",
    ),
    (
        "unknown-strategy-param",
        _with("strategy.params", {"proximal_muu": 0.1}),
        "strategy.params.proximal_muu: unknown key",
    ),
    (
        "unknown-model-param",
        _with("model.params", {"hiddn": [8]}),
        "model.params.hiddn: unknown key (did you mean 'hidden'?)",
    ),
    (
        "missing-name",
        _without("data", "partitioner") | {"name": None},
        "name: Input should be a valid string",
    ),
    (
        "bad-variant",
        _with("variants", {"fast": {"rounds": -1}}),
        "variants.fast.rounds: Input should be greater than or equal to 1",
    ),
    (
        "variant-typo",
        _with("variants", {"fast": {"strategy.nme": "fedprox"}}),
        "variants.fast.strategy.nme: unknown key",
    ),
    ("top-level-list", [1, 2, 3], "expected a mapping of sections, got list"),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_scenario_is_one_line_exit_2(tmp_path: Path, data: Any, expected: str) -> None:
    path = write_yaml(tmp_path / "bad.yaml", data)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines, "no error printed"
    assert all(ln.startswith(f"error: {path}: ") for ln in lines), lines
    assert any(expected in ln for ln in lines), lines


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("name: x\nrounds: [1, 2\n", "YAML syntax error at line"),
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
    ],
    ids=["yaml-syntax", "empty-file", "comment-only"],
)
def test_unreadable_file(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert expected in result.output


def test_missing_file() -> None:
    result = CliRunner().invoke(app, ["run", "does/not/exist.yaml"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: does/not/exist.yaml: file not found"


def test_run_reports_errors_before_training(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", _with("strategy.name", "fedavgg"))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "strategy.name: unknown strategy: 'fedavgg' is not one of:" in result.output
    assert "(did you mean 'fedavg'?)" in result.output
    assert not (tmp_path / "out").exists()


def test_bad_set_override(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "ok.yaml", TINY)
    result = CliRunner().invoke(app, ["run", str(path), "--set", "rounds"])
    assert result.exit_code == 2
    assert "--set: 'rounds' is not of the form dotted.key=value" in result.output


def test_override_value_is_validated(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "ok.yaml", TINY)
    result = CliRunner().invoke(app, ["run", str(path), "--set", "client.optimizer.lr=-1"])
    assert result.exit_code == 2
    assert "client.optimizer.lr: Input should be greater than or equal to 0" in result.output


def test_incompatible_model_and_data(tmp_path: Path) -> None:
    data = _with("data.dataset", {"name": "mnist1d", "num_samples": 400})
    data["model"] = {"name": "cnn"}
    path = write_yaml(tmp_path / "bad.yaml", data)
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert (
        "model.name: 'cnn' needs image data of shape (C, H, W) or (H, W), got (40,)"
        in result.output
    )


def test_missing_npz(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", _with("data.dataset", "npz:nowhere.npz"))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "data.dataset.path: file not found: nowhere.npz" in result.output


def test_every_problem_is_reported(tmp_path: Path) -> None:
    data = _with("roundz", 3)
    data["client"]["batch_size"] = 0
    path = write_yaml(tmp_path / "bad.yaml", data)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 2


def test_required_strategy_param(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", _with("strategy", {"name": "qfedavg"}))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "strategy.params.client_learning_rate: required parameter is missing" in result.output


def test_dp_mode_incompatible_with_model(tmp_path: Path) -> None:
    data = _with("client.dp", {"mode": "opacus-hooks"})
    data["model"] = {"name": "lstm"}
    path = write_yaml(tmp_path / "bad.yaml", data)
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert (
        "client.dp.mode: 'opacus-hooks' cannot train fedsim's LSTM layers; use mode: fast"
        in result.output
    )
