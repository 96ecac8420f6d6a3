"""Checkpoints and `fedsim run --resume`: a resumed run ends exactly as an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import fedsim
from fedsim.cli.main import app
from fedsim.errors import RunDirectoryError, ScenarioError
from fedsim.outputs.metrics_log import read_metrics
from fedsim.server.checkpoint import checkpoint_path, load_checkpoint
from tests.conftest import run_killed_in_round, same_final_arrays, strip_wall_clock, write_yaml


@pytest.fixture
def stateful(tiny: dict[str, Any]) -> dict[str, Any]:
    """State everywhere: server optimizer moments (FedAdam), node sampling, DP accountants
    in every node's context.state, stragglers/dropouts on the virtual clock."""
    tiny["rounds"] = 5
    tiny["strategy"] = {"name": "fedadam", "params": {"fraction_train": 0.5, "eta": 0.05}}
    tiny["client"]["dp"] = {"noise_multiplier": 1.0, "max_grad_norm": 1.0}
    tiny["system"].update(straggle_prob=0.3, dropout_prob=0.1, deadline_s=1.0)
    tiny["output"]["checkpoint_every"] = 2
    return tiny


def test_checkpoints_are_written_every_n_rounds(stateful: dict[str, Any], tmp_path: Path) -> None:
    result = fedsim.run(fedsim.load_scenario(stateful), tmp_path / "run")
    checkpoint = load_checkpoint(result.run_dir)
    assert checkpoint.server_round == 4  # rounds 2 and 4; the last write wins
    assert checkpoint.strategy_state["m_t"] is not None  # FedAdam's first moment
    assert checkpoint.engine_state["node_states"]  # DP accountant histories
    assert not list(checkpoint_path(result.run_dir).parent.glob("*.tmp"))


def test_resume_after_a_crash_ends_like_an_uninterrupted_run(
    stateful: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ServerApp dies in round 3 (after the round-2 checkpoint); resuming reruns 3..5."""
    whole = fedsim.run(fedsim.load_scenario(stateful), tmp_path / "whole")

    run_killed_in_round(fedsim.load_scenario(stateful), tmp_path / "crashed", 3, monkeypatch)
    assert load_checkpoint(tmp_path / "crashed").server_round == 2

    resumed = fedsim.resume(tmp_path / "crashed")
    assert strip_wall_clock(resumed.metrics) == strip_wall_clock(whole.metrics)
    assert [r["round"] for r in resumed.metrics] == [0, 1, 2, 3, 4, 5]
    assert same_final_arrays(resumed.run_dir, whole.run_dir)


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_metrics(tiny: dict[str, Any], tmp_path: Path) -> None:
    """A `fedsim run` subprocess is SIGKILLed mid-way after a checkpoint; `--resume` finishes it."""
    tiny["rounds"] = 24
    tiny["strategy"] = {"name": "fedadam", "params": {"fraction_train": 0.5, "eta": 0.05}}
    tiny["system"].update(straggle_prob=0.2, deadline_s=1.0)
    tiny["output"]["checkpoint_every"] = 3
    scenario = write_yaml(tmp_path / "s.yaml", tiny)
    fedsim_cli = [sys.executable, "-c", "from fedsim.cli.main import main; main()", "run", "-q"]
    env = dict(os.environ)

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([*fedsim_cli, str(scenario), "--out", str(run_dir)], env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint_path(run_dir).exists():
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    rounds_done = len(read_metrics(run_dir)) - 1
    assert rounds_done < tiny["rounds"], "the run finished before it could be killed"
    assert not (run_dir / "summary.json").exists()

    subprocess.run([*fedsim_cli, "--resume", str(run_dir)], env=env, check=True)
    subprocess.run(
        [*fedsim_cli, str(scenario), "--out", str(tmp_path / "whole")], env=env, check=True
    )
    resumed, whole = read_metrics(run_dir), read_metrics(tmp_path / "whole")
    assert len(whole) == tiny["rounds"] + 1
    assert strip_wall_clock(resumed) == strip_wall_clock(whole)
    assert same_final_arrays(run_dir, tmp_path / "whole")


def test_checkpoints_need_a_resumable_engine(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["output"]["checkpoint_every"] = 1
    tiny["engine"] = {"name": "ray"}
    with pytest.raises(ScenarioError, match=r"output.checkpoint_every: engine 'ray'.*inprocess"):
        fedsim.run(fedsim.load_scenario(tiny), tmp_path / "r")


def test_resume_without_a_checkpoint_is_a_user_error(tiny: dict[str, Any], tmp_path: Path) -> None:
    fedsim.run(fedsim.load_scenario(tiny), tmp_path / "r")
    with pytest.raises(RunDirectoryError, match="no checkpoint"):
        fedsim.resume(tmp_path / "r")
    result = CliRunner().invoke(app, ["run", "--resume", str(tmp_path / "r")])
    assert result.exit_code == 2 and "no checkpoint" in result.output
    result = CliRunner().invoke(app, ["run", "--resume", str(tmp_path / "nothing-here")])
    assert result.exit_code == 2 and "not a run directory" in result.output
    result = CliRunner().invoke(app, ["run"])
    assert result.exit_code == 2 and "--resume" in result.output
