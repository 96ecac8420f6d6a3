"""``fedsim run --jobs N``: a comparison's runs at once, the same comparison as one by one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import fedsim
from fedsim.cli.main import app
from fedsim.outputs.metrics_log import read_metrics
from tests.conftest import same_final_arrays, strip_wall_clock, write_yaml


def test_two_jobs_give_the_comparison_of_one(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["rounds"] = 1
    tiny["seeds"] = [0, 1]
    tiny["variants"] = {"a": {}, "b": {"client.optimizer.lr": 0.01}}
    tiny["system"].update(straggle_prob=0.3, deadline_s=1.0)
    path = write_yaml(tmp_path / "s.yaml", tiny)
    outputs = []
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        result = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "-q", "-j", jobs])
        assert result.exit_code == 0, result.output
        outputs.append((out, result.output.replace(str(out), "OUT")))
    (one, printed_one), (two, printed_two) = outputs
    assert printed_two == printed_one  # the printed table
    for name in ("comparison.csv", "comparison.md"):
        assert (two / name).read_text() == (one / name).read_text()
    runs = sorted(p.name for p in one.iterdir() if p.is_dir())
    assert runs == ["a-seed0", "a-seed1", "b-seed0", "b-seed1"]
    for run in runs:
        assert strip_wall_clock(read_metrics(two / run)) == strip_wall_clock(
            read_metrics(one / run)
        )
        assert same_final_arrays(one / run, two / run)


def test_jobs_must_be_positive(tiny: dict[str, Any], tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "s.yaml", tiny)
    result = CliRunner().invoke(app, ["run", str(path), "--jobs", "0"])
    assert result.exit_code == 2 and "--jobs" in result.output


def test_callback_objects_need_one_job(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["variants"] = {"a": {}, "b": {"client.optimizer.lr": 0.01}}
    with pytest.raises(ValueError, match="jobs=1"):
        fedsim.run_experiment(
            fedsim.load_scenario(tiny), tmp_path / "o", callbacks=[object()], jobs=2
        )
    assert not (tmp_path / "o").exists()
