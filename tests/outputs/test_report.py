"""`fedsim report`: overlay runs, one table row per run, CSV and PNG written."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import fedsim
from fedsim.cli.main import app
from fedsim.outputs.report import write_report


@pytest.fixture
def two_runs(tiny: dict[str, Any], tmp_path: Path) -> list[Path]:
    fedavg = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "fedavg")
    tiny["strategy"] = {"name": "fedprox", "params": {"proximal_mu": 0.5}}
    tiny["rounds"] = 3
    fedprox = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "fedprox")
    return [fedavg.run_dir, fedprox.run_dir]


def test_report_rows_match_each_runs_summary(two_runs: list[Path], tmp_path: Path) -> None:
    report = write_report(two_runs, tmp_path / "out", x="virtual_time")
    assert [r["run"] for r in report.rows] == ["fedavg", "fedprox"]
    for row, run_dir in zip(report.rows, two_runs, strict=True):
        summary = json.loads((run_dir / "summary.json").read_text())
        for key in ("final_eval_accuracy", "best_eval_accuracy", "rounds", "virtual_time_s"):
            assert row[key] == summary[key]
        assert row["target_accuracy"] == 0.5  # each run's own output.target_accuracy
    assert [r["rounds"] for r in report.rows] == [2, 3]
    with report.csv_path.open() as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["fedavg", "fedprox"]
    assert {p.name for p in report.plots} == {"report_accuracy.png", "report_loss.png"}


def test_a_target_given_on_the_command_line_overrides_the_runs(
    two_runs: list[Path], tmp_path: Path
) -> None:
    """Target 0 (as a tiny positive number): every run reaches it at round 0."""
    report = write_report(two_runs, tmp_path / "out", target=1e-9)
    assert [r["rounds_to_target"] for r in report.rows] == [0, 0]
    report = write_report(two_runs, tmp_path / "out", target=1.0)
    assert [r["rounds_to_target"] for r in report.rows] == [None, None]


def test_report_command(two_runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = CliRunner().invoke(
        app, ["report", *map(str, two_runs), "--x", "round", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "fedavg" in result.output and "fedprox" in result.output
    assert {p.name for p in out.iterdir()} == {
        "report.csv",
        "report_accuracy.png",
        "report_loss.png",
    }


def test_report_of_a_directory_that_is_no_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not a run directory" in result.output
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--x", "time"])
    assert result.exit_code == 2


def _write_log(run_dir: Path, tail: str) -> Path:
    """A three-round log (accuracy 0.1, 0.2, 0.3) followed by ``tail``."""
    run_dir.mkdir(parents=True)
    lines = [
        json.dumps(
            {
                "round": r,
                "virtual_time_s": float(r),
                "eval_loss": 1.0,
                "eval_accuracy": r / 10 + 0.1,
            }
        )
        for r in range(3)
    ]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n" + tail, encoding="utf-8")
    return run_dir


def test_report_reads_a_log_whose_last_line_is_partial_with_a_warning(tmp_path: Path) -> None:
    """A run killed while writing (or a truncated copy): the complete records count."""
    run_dir = _write_log(tmp_path / "cut", '{"round": 3, "virtual_ti')
    result = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "partial record" in result.output
    with (tmp_path / "out" / "report.csv").open() as f:
        (row,) = csv.DictReader(f)
    assert row["rounds"] == "2" and float(row["final_eval_accuracy"]) == pytest.approx(0.3)


def test_report_names_a_garbled_line_in_the_middle_of_a_log(tmp_path: Path) -> None:
    run_dir = _write_log(tmp_path / "bad", "\x00\x00\x00\n" + json.dumps({"round": 4}) + "\n")
    result = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "line 4 is not a JSON record" in result.output
    assert "Traceback" not in result.output


def test_report_curves_are_variants_with_their_seeds_pooled(tmp_path: Path) -> None:
    """Runs that differ only in the seed are one curve, named by the variant."""
    import matplotlib.pyplot as plt
    import yaml

    dirs = []
    for variant in ("fedavg", "fedprox"):
        for seed in (0, 1):
            run_dir = tmp_path / f"{variant}-seed{seed}"
            _write_log(run_dir, "")
            scenario = {
                "name": "cmp",
                "seed": seed,
                "variant": variant,
                "output": {"target_accuracy": 0.25},
            }
            (run_dir / "scenario.resolved.yaml").write_text(yaml.safe_dump(scenario))
            dirs.append(run_dir)
    with plt.rc_context({"svg.fonttype": "none"}):
        report = write_report(dirs, tmp_path / "out", formats=["svg"])
    text = (tmp_path / "out" / "report_accuracy.svg").read_text()
    assert "fedavg (n=2 seeds)" in text and "fedprox (n=2 seeds)" in text
    assert "target 0.25" in text
    assert [r["run"] for r in report.rows] == [d.name for d in dirs]  # rows stay per run
    assert dict(report.differences) == {
        "scenario.seed": ["0", "1", "0", "1"],
        "scenario.variant": ["fedavg", "fedavg", "fedprox", "fedprox"],
    }


def test_report_of_a_comparison_folder_reports_its_runs(
    two_runs: list[Path], tmp_path: Path
) -> None:
    """What `fedsim run` writes for variants x seeds (comparison.csv beside the runs)."""
    folder = two_runs[0].parent
    (folder / "comparison.csv").write_text("variant\n")
    report = write_report([folder], tmp_path / "out")
    assert [r["run"] for r in report.rows] == ["fedavg", "fedprox"]


def _cli(*args: str, cwd: Path) -> Any:
    """``fedsim ARGS`` in a subprocess, as a user runs it, on a wide terminal."""
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", "from fedsim.cli.main import main; main()", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "COLUMNS": "250"},  # rich wraps cells to the terminal's width
    )


def test_report_of_a_comparison_folder_from_the_cli_pools_each_variants_seeds(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """`fedsim run` of 2 variants x 2 seeds, then `fedsim report` on its folder.

    The variants table holds each variant's mean ± 95% CI over its seeds, computed here
    from the runs' own summary.json files (t(0.975, 1)·s/√2), labelled by the key in
    which the variants differ. Reported on one run of a variant, no interval is shown.
    """
    import statistics

    from scipy.stats import t

    from tests.conftest import write_yaml

    tiny.pop("seed")
    tiny["seeds"] = [0, 1]
    tiny["variants"] = {"slow": {"client.optimizer.lr": 0.05}, "fast": {"client.optimizer.lr": 0.2}}
    write_yaml(tmp_path / "cmp.yaml", tiny)
    ran = _cli("run", "cmp.yaml", "--out", "cmp", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    report = _cli("report", "cmp", "--out", "rep", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "variants (over their seeds)" in report.stdout
    for variant, lr in (("slow", 0.05), ("fast", 0.2)):
        finals = [
            json.loads((tmp_path / "cmp" / f"{variant}-seed{s}" / "summary.json").read_text())[
                "final_eval_accuracy"
            ]
            for s in (0, 1)
        ]
        half = t.ppf(0.975, 1) * statistics.stdev(finals) / 2**0.5
        row = next(line for line in report.stdout.splitlines() if f"optimizer.lr={lr} " in line)
        assert f"{statistics.fmean(finals):.4f} ± {half:.4f}" in row
    assert (tmp_path / "rep" / "report_variants.csv").is_file()
    # One run of `slow` beside both of `fast`: `slow`'s mean alone, no ±.
    report = _cli(
        "report", "slow-seed0", "fast-seed0", "fast-seed1", "--out", "../rep2", cwd=tmp_path / "cmp"
    )
    assert report.returncode == 0, report.stderr
    slow_row = next(line for line in report.stdout.splitlines() if "optimizer.lr=0.05 " in line)
    assert "±" not in slow_row
    fast_row = next(line for line in report.stdout.splitlines() if "optimizer.lr=0.2 " in line)
    assert "±" in fast_row
