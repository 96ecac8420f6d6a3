"""A run directory written before the layout moved still resumes and still reports.

``tests/fixtures/pre_move_run/`` was written by commit c7b47b8 (see its README): a
2-round SCAFFOLD run with a checkpoint after each round, and the same scenario run for
3 rounds in one go. Today's code resumes the old run to 3 rounds and must end where the
old code's uninterrupted run ended.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

import fedsim
from fedsim.outputs.metrics_log import WALL_CLOCK_FIELDS

FIXTURE = Path(__file__).parent / "fixtures" / "pre_move_run"


def _records(path: Path) -> list[dict[str, object]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [
        {k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK_FIELDS} for line in lines
    ]


def test_an_old_run_resumes_to_the_old_codes_uninterrupted_end(tmp_path: Path) -> None:
    run_dir = shutil.copytree(FIXTURE / "run", tmp_path / "run")
    result = fedsim.resume(run_dir, ["rounds=3"])
    assert [m["round"] for m in result.metrics] == [0, 1, 2, 3]
    resumed, old = (
        _records(run_dir / "metrics.jsonl"),
        _records(FIXTURE / "uninterrupted_metrics.jsonl"),
    )
    # Since issue 31 every SCAFFOLD train message also carries `scaffold-confirmed-round`
    # (which c_i+ the server committed): 32 more bytes per message, so round 3 (the one
    # run by today's code) sends 4 x 32 more bytes down and its link time grows with them.
    key = len("scaffold-confirmed-round") + 8  # the key and its int64 value
    assert resumed[3]["bytes_down"] == old[3]["bytes_down"] + 4 * key
    moved = ("bytes_down", "virtual_time_s")
    assert [{k: v for k, v in r.items() if k not in moved} for r in resumed] == [
        {k: v for k, v in r.items() if k not in moved} for r in old
    ]
    assert resumed[:3] == old[:3]  # the rounds the old code ran: exactly as it wrote them
    with (
        np.load(run_dir / "final_arrays.npz") as resumed,
        np.load(FIXTURE / "uninterrupted_final_arrays.npz") as whole,
    ):
        assert sorted(resumed.files) == sorted(whole.files)
        for key in whole.files:
            assert np.array_equal(resumed[key], whole[key]), key


def test_report_reads_an_old_run(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedsim.cli.main import app

    run_dir = shutil.copytree(FIXTURE / "run", tmp_path / "run")
    result = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "r" / "report.csv").read_text(encoding="utf-8").splitlines()
    header, row = rows[0].split(","), dict(zip(rows[0].split(","), rows[1].split(","), strict=True))
    assert "final_eval_accuracy" in header
    # The old run's own summary, read back: its last record's accuracy after 2 rounds.
    last = _records(FIXTURE / "run" / "metrics.jsonl")[-1]
    assert float(row["final_eval_accuracy"]) == last["eval_accuracy"] and row["rounds"] == "2"
