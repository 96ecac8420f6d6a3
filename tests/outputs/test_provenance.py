"""provenance.json names versions and commit; `fedsim report` says where runs differ."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

import fedsim
from fedsim.cli.main import app
from fedsim.outputs.provenance import git_state
from fedsim.outputs.report import differences

ROOT = Path(__file__).parents[2]


def test_a_run_records_versions_commit_host_and_scenario_digest(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    import hashlib

    tiny["rounds"] = 1
    result = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "r")
    prov = json.loads((result.run_dir / "provenance.json").read_text())
    assert prov["versions"]["flwr"] == metadata.version("flwr")
    assert prov["versions"]["torch"] == metadata.version("torch")
    assert prov["versions"]["opacus"] == metadata.version("opacus")
    assert prov["versions"]["python"] == platform.python_version()
    assert prov["versions"]["fedsim"] == fedsim.__version__
    resolved = (result.run_dir / "scenario.resolved.yaml").read_bytes()
    assert prov["scenario_sha256"] == hashlib.sha256(resolved).hexdigest()
    assert prov["host"]["cpu_count"] >= 1 and isinstance(prov["host"]["gpus"], list)
    assert prov["command"]  # sys.argv: pytest's command line here
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if head.returncode == 0:  # a checkout (CI's, or this one)
        assert prov["git"]["commit"] == head.stdout.strip()
        assert isinstance(prov["git"]["dirty"], bool)


def test_git_state_outside_a_checkout_is_none(tmp_path: Path) -> None:
    assert git_state(tmp_path) is None


def test_git_state_sees_a_dirty_checkout(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    assert git_state(tmp_path)["dirty"] is False  # type: ignore[index]
    (tmp_path / "a.txt").write_text("2")
    assert git_state(tmp_path)["dirty"] is True  # type: ignore[index]


def test_report_tells_two_runs_apart_by_the_key_set_differently(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    tiny["rounds"] = 1
    a = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "a").run_dir
    b = fedsim.run(fedsim.load_scenario(tiny, ["client.optimizer.lr=0.05"]), tmp_path / "b").run_dir
    diff = dict(differences([a, b]))
    assert diff == {"scenario.client.optimizer.lr": ["0.1", "0.05"]}
    result = CliRunner().invoke(
        app, ["report", str(a), str(b), "--out", str(tmp_path / "rep")], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "where the runs differ" in result.output
    assert "scenario.client.optimizer.lr" in result.output
    narrow = CliRunner().invoke(
        app, ["report", str(a), str(b), "--out", str(tmp_path / "rep")], env={"COLUMNS": "60"}
    )
    assert narrow.exit_code == 0 and "…" not in narrow.output  # cells wrap, never cut
    # The same run twice differs in nothing.
    assert differences([a, a]) == []
    csv_out = CliRunner().invoke(
        app, ["report", str(a), str(b), "--csv", "--out", str(tmp_path / "c")]
    )
    assert csv_out.exit_code == 0
    first = json.loads((a / "summary.json").read_text())["final_eval_accuracy"]
    assert repr(first) in csv_out.output  # full precision, never cut
