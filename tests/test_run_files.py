"""A user's files are never fedsim's to delete, and a planted link is never written through."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import fedsim
from fedsim.errors import FedsimWarning, RunDirectoryError
from fedsim.outputs.callbacks import Callback, RunInfo
from fedsim.run_files import MANIFEST_FILE, RUN_ENTRIES
from tests.conftest import TINY, write_yaml

FEDSIM = [sys.executable, "-c", "from fedsim.cli.main import main; main()"]


def _fedsim(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FEDSIM, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _crashed_run_next_to(tmp_path: Path) -> dict[str, bytes]:
    """A directory that looks like a crashed run (resolved scenario, partial log) and
    also holds a user's project: return the user's files and their contents."""
    out = tmp_path / "out"
    (out / "src").mkdir(parents=True)
    (out / ".git" / "objects").mkdir(parents=True)
    user = {
        "src/model.py": b"import torch\n",
        ".git/HEAD": b"ref: refs/heads/main\n",
        ".git/objects/ab": b"\x00blob",
        "NOTES.md": b"# my notes\n",
    }
    for name, data in user.items():
        (out / name).write_bytes(data)
    (out / "scenario.resolved.yaml").write_text("name: old\n")
    (out / "metrics.jsonl").write_text('{"round": 0}\n{"rou')
    return user


def test_out_on_a_directory_with_foreign_files_next_to_a_crashed_run_keeps_every_one(
    tmp_path: Path,
) -> None:
    """The user's ``fedsim run --out DIR``: one line, exit 2, every file intact."""
    user = _crashed_run_next_to(tmp_path)
    scenario = write_yaml(tmp_path / "s.yaml", {**copy.deepcopy(TINY), "rounds": 1})
    proc = _fedsim("run", "-q", str(scenario), "--out", "out", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "fedsim did not write" in error[0]
    assert ".git" in error[0] and "NOTES.md" in error[0] and "src" in error[0]
    for name, data in user.items():
        assert (tmp_path / "out" / name).read_bytes() == data, name
    assert (tmp_path / "out" / "metrics.jsonl").read_text().endswith('{"rou')  # not touched


def test_a_symlinked_run_lock_is_refused_and_never_written_through(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("do not overwrite\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run.lock").symlink_to(precious)
    scenario = write_yaml(tmp_path / "s.yaml", {**copy.deepcopy(TINY), "rounds": 1})
    proc = _fedsim("run", "-q", str(scenario), "--out", "out", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "symbolic link" in proc.stderr and "Traceback" not in proc.stderr
    assert precious.read_text() == "do not overwrite\n"


@pytest.mark.parametrize("name", ["summary.json", "metrics.jsonl", "CRASHED", "plots"])
def test_a_planted_link_where_fedsim_writes_is_refused(
    tiny: dict[str, Any], tmp_path: Path, name: str
) -> None:
    """A dangling link too: ``exists()`` is false for it, the check must not be."""
    target = tmp_path / "victim"
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(target)
    with pytest.raises(RunDirectoryError, match="symbolic link"):
        fedsim.run(fedsim.load_scenario(tiny), out)
    assert not target.exists()


class _WritesItsOwnFile(Callback):
    """A user callback that keeps a file of its own in the run directory, then fails."""

    def on_round_end(self, run: RunInfo, server_round: int, record: Any, arrays: Any) -> None:
        (run.run_dir / "my_callback.txt").write_text(f"round {server_round}\n")
        raise RuntimeError("callback gave up")


def test_every_file_a_run_writes_is_fedsims_own_so_a_crashed_run_is_replaced(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """Every writer (trackers, checkpoints, plots, provenance) writes names that :data:`RUN_ENTRIES` or the manifest covers; a
    crashed run's callback file is listed in its manifest and replaced with it."""
    tiny["rounds"] = 1
    tiny["system"].update(straggle_prob=0.3, deadline_s=1.0)
    tiny["output"].update(plots=True, checkpoint_every=1, trackers=["csv"])
    scenario = fedsim.load_scenario(tiny)
    done = fedsim.run(scenario, tmp_path / "a")
    written = {e.name for e in done.run_dir.iterdir()}
    assert written <= RUN_ENTRIES, written - RUN_ENTRIES
    assert {"plots", "checkpoints", "metrics.csv", "provenance.json"} <= written
    assert json.loads((done.run_dir / MANIFEST_FILE).read_text())  # lists the run's files

    tiny["output"].update(checkpoint_every=None)
    out = tmp_path / "b"
    with pytest.raises(RuntimeError, match="gave up"):
        fedsim.run(fedsim.load_scenario(tiny), out, callbacks=[_WritesItsOwnFile()])
    assert "my_callback.txt" in json.loads((out / MANIFEST_FILE).read_text())
    with pytest.warns(FedsimWarning, match="replaced the crashed run"):
        fedsim.run(fedsim.load_scenario(tiny), out)
    assert not (out / "my_callback.txt").exists()
