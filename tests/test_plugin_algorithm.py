"""A plugin algorithm in one file outside the repository has a shipped one's powers.

``sqplug.py`` (``fedsim_examples/sqplug.py``, copied to a fresh folder) registers, with ``fedsim.register_algorithm``,
a strategy whose clients run the plugin's own local step; that step replies with one
extra array per model parameter (``sqplug.sq.<name>``: the squared update), which the
engine accepts only because the spec declares the prefix, and which DP-SGD does not
cover, so the spec refuses ``client.dp``. The strategy logs the sum of those arrays as
``sqplug-sum``: positive only if the plugin's step ran where the clients trained and its
reply arrays reached the strategy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TINY, write_yaml

FEDSIM = str(Path(sys.executable).with_name("fedsim"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ROOT = Path(__file__).parents[1]
# The worked example of docs/write-a-strategy.md, copied out of the repository.
PLUGIN = (ROOT / "fedsim_examples" / "sqplug.py").read_text(encoding="utf-8")


def _work(tmp_path: Path, **overrides: Any) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "sqplug.py").write_text(PLUGIN, encoding="utf-8")
    scenario = {**TINY, "system": {}, "strategy": {"name": "sqplug"}, "plugins": ["sqplug"]}
    scenario["data"] = {**TINY["data"], "num_clients": 3}
    write_yaml(work / "s.yaml", {**scenario, **overrides})
    return work


def _fedsim(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FEDSIM, *args], cwd=work, env=ENV, capture_output=True, text=True, timeout=300
    )


def _sums(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line).get("train/sqplug-sum") for line in lines][1:]


def test_refused_under_dp_by_validate_and_run_alike(tmp_path: Path) -> None:
    work = _work(tmp_path, client={**TINY["client"], "dp": {"noise_multiplier": 1.0}})
    validate = _fedsim(work, "validate", "s.yaml")
    run = _fedsim(work, "run", "s.yaml", "-q", "--out", "r")
    for done in (validate, run):
        assert done.returncode == 2, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
        assert len(errors) == 1, done.stderr
        assert "client.dp" in errors[0] and "sqplug" in errors[0] and "squared" in errors[0]
        assert "Traceback" not in done.stderr
    assert not (work / "r").exists()  # refused before a run directory was claimed


@pytest.mark.parametrize("workers", [1, 2])
def test_runs_in_process(tmp_path: Path, workers: int) -> None:
    work = _work(tmp_path, engine={"name": "inprocess", "workers": workers})
    done = _fedsim(work, "run", "s.yaml", "-q", "--out", "r")
    assert done.returncode == 0, done.stderr
    sums = _sums(work / "r")
    assert len(sums) == 2 and all(s is not None and s > 0 for s in sums)


def test_runs_as_a_comparison_in_job_processes(tmp_path: Path) -> None:
    """``--jobs 2``: each job process imports the plugin from the working directory."""
    work = _work(tmp_path, seeds=[1, 2])
    done = _fedsim(work, "run", "s.yaml", "-q", "--jobs", "2", "--out", "r")
    assert done.returncode == 0, done.stderr
    runs = sorted(p.parent for p in (work / "r").rglob("metrics.jsonl"))
    assert len(runs) == 2
    for run_dir in runs:
        sums = _sums(run_dir)
        assert len(sums) == 2 and all(s is not None and s > 0 for s in sums)


def test_undeclared_reply_keys_are_refused_by_the_engine(tmp_path: Path) -> None:
    """The spec's reply prefixes are what lets those arrays through: without them every
    reply is refused (failures), and nothing of the plugin's arrays reaches the server."""
    work = _work(tmp_path)
    source = (work / "sqplug.py").read_text(encoding="utf-8")
    (work / "sqplug.py").write_text(source.replace("reply_prefixes=(SQUARES,), ", ""))
    done = _fedsim(work, "run", "s.yaml", "-q", "--out", "r")
    lines = (work / "r" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines][1:]
    # Every reply refused is a failed round: the run stops there (exit 1), naming why.
    assert done.returncode == 1, done.stderr
    assert "training stopped" in done.stderr and "unexpected array 'sqplug.sq." in done.stderr
    assert records and all(
        r["failures"] == 3 and r.get("train/sqplug-sum") is None for r in records
    )


@pytest.mark.slow
def test_runs_on_ray(tmp_path: Path) -> None:
    work = _work(tmp_path, engine={"name": "ray", "num_cpus": 2, "object_store_mb": 128})
    done = _fedsim(work, "run", "s.yaml", "-q", "--out", "r")
    assert done.returncode == 0, done.stderr + done.stdout
    sums = _sums(work / "r")
    assert len(sums) == 2 and all(s is not None and s > 0 for s in sums)
