"""Every shipped scenario is a test case: it validates, every key is commented, and a
2-round smoke run of each of its runs completes. The quickstart is also run in full."""

from __future__ import annotations

from pathlib import Path

import pytest

import fedsim
from fedsim.config.expand import expand
from fedsim.config.schema import has_regression_targets

SCENARIOS = sorted(Path(__file__).parents[1].joinpath("scenarios").glob("*.yaml"))


def test_scenarios_are_shipped() -> None:
    assert any(p.name == "quickstart.yaml" for p in SCENARIOS)


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_key_is_commented(path: Path) -> None:
    for n, line in enumerate(path.read_text().splitlines(), 1):
        body = line.strip()
        if body and not body.startswith("#") and not body.startswith("- "):
            assert "#" in line, f"{path.name}:{n} has no comment: {line!r}"


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_run_gives_every_class_to_some_client(path: Path) -> None:
    """`fedsim validate --strict`: every variant x seed split covers every class."""
    from typer.testing import CliRunner

    from fedsim.cli.main import app

    result = CliRunner().invoke(app, ["validate", "--strict", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_smoke_run(path: Path, tmp_path: Path) -> None:
    scenario = fedsim.load_scenario(path, ["rounds=2", "output.plots=false"])
    runs = expand(scenario)
    # One seed per variant keeps CI short; every variant still runs.
    first_seed = [r for r in runs if r.seed == runs[0].seed]
    for concrete in first_seed:
        result = fedsim.run(concrete, tmp_path / (concrete.variant or "run"))
        assert [m["round"] for m in result.metrics] == [0, 1, 2]
        assert result.summary["final_eval_loss"] is not None
        if not has_regression_targets(concrete.data.dataset):  # least squares: no accuracy
            assert result.summary["final_eval_accuracy"] is not None


@pytest.mark.slow
def test_quickstart_reaches_its_target(tmp_path: Path) -> None:
    result = fedsim.run(fedsim.load_scenario(SCENARIOS[0].parent / "quickstart.yaml"), tmp_path)
    assert result.summary["final_eval_accuracy"] >= 0.85
    assert result.summary["stragglers"] > 0  # the deadline really bites
