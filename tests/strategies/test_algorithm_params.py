"""Every shipped algorithm's typed ``strategy.params``: one model, its constructor's defaults,
a docstring per field, and one line per bad value from ``validate`` and ``run`` alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedsim.algorithms import shipped_algorithms
from fedsim.algorithms.params import StrategyParams
from fedsim.cli.main import app
from fedsim.compose.components import param_defaults
from fedsim.strategies import STRATEGIES
from tests.conftest import write_yaml

SHIPPED = sorted(spec.name for spec in shipped_algorithms() if spec.server.startswith("fedsim."))


def test_the_shipped_algorithms_are_the_ones_the_brief_names() -> None:
    expected = {"agc", "demlearn", "fedavg", "fedaws", "fedcurv", "fednova", "lasgd", "ldpc"}
    assert set(SHIPPED) == expected | {"median-of-means", "scaffold"}


@pytest.mark.parametrize("name", SHIPPED)
def test_params_model_matches_the_constructor(name: str) -> None:
    spec = next(s for s in shipped_algorithms() if s.name == name)
    assert spec.params is not None and issubclass(spec.params, StrategyParams)
    defaults = param_defaults(STRATEGIES.get(name))
    for field, info in spec.params.model_fields.items():
        assert info.description, f"{name}: {field} has no docstring"
        assert field in defaults, f"{name}: {field} is not a constructor parameter"
        default = info.get_default(call_default_factory=True)
        given = defaults[field]
        assert default == (list(given) if isinstance(given, tuple) else given), (name, field)


@pytest.mark.parametrize(
    ("name", "params", "line"),
    [
        (
            "fedcurv",
            {"fisher": "exact"},
            "fisher: must be one of 'empirical', 'batch', got 'exact'",
        ),
        ("agc", {"p": 1.0}, "p: must be a number in [0, 1), got 1.0"),
        (
            "agc",
            {"server_momentum": "0.9"},
            "server_momentum: must be a number in [0, 1), got '0.9'",
        ),
        ("ldpc", {"max_iterations": 2.5}, "max_iterations: must be an integer >= 1, got 2.5"),
        ("lasgd", {"communication": "smoke"}, "communication: must be one of 'allreduce', "),
        ("demlearn", {"groups": [4, 1]}, "groups: groups[1] must be >= 2"),
        ("fedavg", {"min_train_nodes": True}, "min_train_nodes: must be an integer >= 0, got True"),
        ("fednova", {"fraction_train": 0}, "fraction_train: must be a number in (0, 1], got 0"),
    ],
)
def test_a_bad_value_is_one_line_from_validate_and_run(
    name: str, params: dict[str, Any], line: str, tiny: dict[str, Any], tmp_path: Path
) -> None:
    tiny["strategy"] = {"name": name, "params": params}
    path = write_yaml(tmp_path / "s.yaml", tiny)
    runner = CliRunner()
    validate = runner.invoke(app, ["validate", str(path)])
    run = runner.invoke(app, ["run", str(path), "-q", "--out", str(tmp_path / "run")])
    errors = [
        [x for x in result.output.splitlines() if x.startswith("error")]
        for result in (validate, run)
    ]
    assert validate.exit_code == run.exit_code == 2
    assert errors[0] == errors[1], errors
    mine = [e for e in errors[0] if ": strategy.params." in e]  # ldpc: also its model, data
    assert len(mine) == 1 and f": strategy.params.{line}" in mine[0], errors
    assert not (tmp_path / "run").exists()
