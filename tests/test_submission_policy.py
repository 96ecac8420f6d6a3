"""What a run submitted to a SuperLink may ask for: nothing on the host by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from flwr.app import Context, RecordDict
from flwr.serverapp import Grid

from fedsim import wire
from fedsim.compose import load_scenario
from fedsim.config.sources import to_yaml
from fedsim.errors import ScenarioError
from fedsim.server.app import main as server_main
from fedsim.submission_policy import ALLOW_ENV, RUNS_ROOT_ENV, SubmissionPolicy


def _config(tiny: dict[str, Any], run_dir: Path, **extra: Any) -> dict[str, Any]:
    return {
        wire.RUN_SCENARIO_YAML: to_yaml(load_scenario(tiny, imports=False)),
        wire.RUN_DIR: str(run_dir),
        **extra,
    }


def _keys(policy: SubmissionPolicy, config: dict[str, Any]) -> list[str]:
    return [p.key for p in policy.problems(config)]


def test_by_default_a_submitted_run_may_name_no_host_path_import_or_resume(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    tiny["strategy"] = {"name": "os:system"}
    policy = SubmissionPolicy.from_environ({})
    assert _keys(policy, _config(tiny, tmp_path, resume=True)) == ["run-dir", "resume"]
    # Once the paths are fine, the import path is named (without importing it).
    inside = SubmissionPolicy(runs_root=tmp_path)
    (problem,) = inside.problems(_config(tiny, tmp_path / "run"))
    assert problem.key == "strategy.name"
    assert "'os:system' is an import path (code)" in problem.message
    assert "--allow-submitted imports" in problem.message


def test_runs_root_confines_run_directories(tiny: dict[str, Any], tmp_path: Path) -> None:
    policy = SubmissionPolicy.from_environ({RUNS_ROOT_ENV: str(tmp_path / "runs")})
    assert policy.problems(_config(tiny, tmp_path / "runs" / "a")) == []
    assert _keys(policy, _config(tiny, tmp_path / "runs" / ".." / "escape")) == ["run-dir"]
    assert _keys(policy, _config(tiny, Path("/etc"))) == ["run-dir"]


def test_a_scenario_path_on_the_host_counts_as_a_host_path(tmp_path: Path) -> None:
    config = {wire.RUN_SCENARIO: "/etc/passwd", wire.RUN_DIR: str(tmp_path)}
    assert _keys(SubmissionPolicy(runs_root=tmp_path), config) == ["scenario"]


def test_the_operator_allows_each_permission(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["strategy"] = {"name": "fedsim_examples.server_lr_fedavg:ServerLrFedAvg"}
    env = {ALLOW_ENV: "imports, run-dir,resume"}
    assert SubmissionPolicy.from_environ(env).problems(_config(tiny, tmp_path, resume=True)) == []
    assert SubmissionPolicy.from_environ(env) == SubmissionPolicy.everything()
    with pytest.raises(ScenarioError, match="unknown permission pickle"):
        SubmissionPolicy.from_environ({ALLOW_ENV: "pickle"})


class _UntouchableGrid:
    """Stands for a SuperLink's grid: the ServerApp must refuse before using it."""

    def __getattr__(self, name: str) -> Any:
        if name == "telemetry":  # how the ServerApp tells fedsim's engines from Flower's
            raise AttributeError(name)
        raise AssertionError(f"the run used the grid ({name})")


def test_the_server_app_refuses_a_submitted_import_path_before_importing_it(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.setenv(RUNS_ROOT_ENV, str(tmp_path))
    tiny["model"] = {"name": "fedsim_no_such_module_18a:factory"}  # would fail on import
    context = Context(
        run_id=1,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config=_config(tiny, tmp_path / "run"),
    )
    with pytest.raises(ScenarioError) as err:
        server_main(cast(Grid, _UntouchableGrid()), context)
    (problem,) = err.value.problems
    assert problem.key == "model.name" and "is an import path (code)" in problem.message


def test_with_imports_allowed_the_server_app_goes_on_to_the_grid(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same submission passes once the operator allowed imports: the ServerApp
    imports the model and starts using the grid (which this stand-in refuses)."""
    monkeypatch.setenv(ALLOW_ENV, "imports")
    monkeypatch.setenv(RUNS_ROOT_ENV, str(tmp_path))
    tiny["model"] = {"name": "fedsim.models.mlp:mlp", "params": {"hidden": [4]}}
    context = Context(
        run_id=1,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config=_config(tiny, tmp_path / "run"),
    )
    with pytest.raises(AssertionError, match="used the grid"):
        server_main(cast(Grid, _UntouchableGrid()), context)
