"""Re-running into a run directory: overwrite, crashed runs, and Flower's log kept quiet."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

import fedsim
from fedsim.errors import FedsimWarning, RunDirectoryError
from fedsim.flower_log import flower_log
from fedsim.outputs.callbacks import Callback, RunInfo


def test_overwrite_replaces_a_finished_run(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["rounds"] = 1
    fedsim.run(fedsim.load_scenario(tiny), tmp_path / "x")
    with pytest.raises(RunDirectoryError, match=r"output\.overwrite"):
        fedsim.run(fedsim.load_scenario(tiny), tmp_path / "x")
    tiny["output"]["overwrite"] = True
    (tmp_path / "x" / "notes.txt").write_text("the user's")
    with pytest.raises(RunDirectoryError, match=r"fedsim did not write \(notes\.txt\)"):
        fedsim.run(
            fedsim.load_scenario(tiny), tmp_path / "x"
        )  # never deletes what it did not write
    assert (tmp_path / "x" / "notes.txt").read_text() == "the user's"
    (tmp_path / "x" / "notes.txt").unlink()
    with pytest.warns(FedsimWarning, match="replaced the run"):
        again = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "x")
    assert (again.run_dir / "summary.json").exists()


def test_overwrite_never_clears_a_directory_that_is_no_run(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "metrics.jsonl").write_text("")
    (tmp_path / "x" / "thesis.tex").write_text("precious")
    tiny["output"]["overwrite"] = True
    with pytest.raises(RunDirectoryError, match=r"no scenario\.resolved\.yaml"):
        fedsim.run(fedsim.load_scenario(tiny), tmp_path / "x")
    assert (tmp_path / "x" / "thesis.tex").exists()


class Boom(Callback):
    def __init__(self, at: int = 1) -> None:
        self.at = at

    def on_round_end(self, run: RunInfo, server_round: int, record: Any, arrays: Any) -> None:
        if server_round == self.at:
            raise RuntimeError("disk on fire")


def test_a_crashed_run_is_marked_and_does_not_block_the_next(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="disk on fire"):
        fedsim.run(fedsim.load_scenario(tiny), tmp_path / "x", callbacks=[Boom()])
    marker = json.loads((tmp_path / "x" / "CRASHED").read_text())
    assert marker["error"] == "RuntimeError" and marker["message"] == "disk on fire"
    with pytest.warns(FedsimWarning, match="replaced the crashed run"):
        result = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "x")
    assert not (tmp_path / "x" / "CRASHED").exists()
    assert [r["round"] for r in result.metrics] == [0, 1, 2]


def test_a_crashed_run_with_a_checkpoint_points_at_resume(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    tiny["output"]["checkpoint_every"] = 1
    with pytest.raises(RuntimeError):  # after round 1's checkpoint
        fedsim.run(fedsim.load_scenario(tiny), tmp_path / "x", callbacks=[Boom(at=2)])
    with pytest.raises(RunDirectoryError, match="--resume"):
        fedsim.run(fedsim.load_scenario(tiny), tmp_path / "x")


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.levels: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.levels.append(record.levelno)


def test_flowers_log_is_silent_unless_verbose(monkeypatch: pytest.MonkeyPatch) -> None:
    """A level set before (or reset by) Flower's import does not decide: the run does."""
    monkeypatch.delenv("FEDSIM_VERBOSE", raising=False)
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.DEBUG)  # what `import flwr` leaves behind
    count = _Count()
    flwr_logger.addHandler(count)
    try:
        from flwr.common.logger import log

        with flower_log():
            log(logging.INFO, "a round")
            log(logging.WARNING, "a deprecation")
            log(logging.ERROR, "a real error")
        with flower_log(verbose=True):
            log(logging.INFO, "shown")
        monkeypatch.setenv("FEDSIM_VERBOSE", "1")  # what `fedsim --verbose` sets
        with flower_log():
            log(logging.INFO, "shown too")
    finally:
        flwr_logger.removeHandler(count)
    assert count.levels == [logging.ERROR, logging.INFO, logging.INFO]
    assert flwr_logger.level == logging.DEBUG  # put back after each run


def test_a_resumed_run_may_change_its_trackers_and_callbacks_not_its_seed(
    tiny: dict[str, Any],
) -> None:
    from fedsim.resume_rules import check_resume

    saved = fedsim.load_scenario(tiny).model_dump(mode="json")
    tiny["output"]["trackers"] = ["csv", "tensorboard"]
    tiny["output"]["callbacks"] = ["tests.outputs.test_callbacks:Recorder"]
    check_resume(saved, fedsim.load_scenario(tiny).model_dump(mode="json"), 1)
    tiny["seed"] = 4
    with pytest.raises(fedsim.ScenarioError, match="seed: changed since the checkpoint"):
        check_resume(saved, fedsim.load_scenario(tiny).model_dump(mode="json"), 1)
