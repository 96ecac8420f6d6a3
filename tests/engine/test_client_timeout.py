"""``engine.client_timeout_s`` means what it says (issue #33, item 5).

It counts from the start of a client's work (a worker's set-up is done before it says
it is ready), a client past it is stopped by killing its worker process (not abandoned
on a thread that keeps the CPU and the GIL), the jobs queued behind it run on a fresh
worker, and the run ends normally (no SIGABRT from a torch thread at exit).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import fedsim
from fedsim.outputs.metrics_log import read_metrics
from tests.conftest import run_with_client_app
from tests.engine.timeout_apps import slow_start_app

ROOT = Path(__file__).resolve().parents[2]


def test_worker_start_up_is_not_the_first_clients_time(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """Set-up takes 2.5 s per worker, the limit is 2 s: round 1 still loses no reply."""
    tiny["engine"] = {"workers": 2, "client_timeout_s": 2.0}
    tiny["rounds"] = 1
    grid = run_with_client_app(fedsim.load_scenario(tiny), slow_start_app, tmp_path / "run")
    grid.close()
    records = read_metrics(tmp_path / "run")
    assert [r["failures"] for r in records] == [0, 0]
    assert records[-1]["participants"] == 4


SCRIPT = """
import json, sys
from pathlib import Path
import fedsim
from tests.conftest import TINY, run_with_client_app
from tests.engine.timeout_apps import spinning_app
from fedsim.outputs.metrics_log import read_metrics

scenario = dict(TINY, rounds=3, engine={"workers": int(sys.argv[2]), "client_timeout_s": 2.0})
grid = run_with_client_app(fedsim.load_scenario(scenario), spinning_app, Path(sys.argv[1]))
grid.close()
print(json.dumps({
    "failures": [r["failures"] for r in read_metrics(Path(sys.argv[1]))],
    "reasons": grid.telemetry.failure_reasons,
    "timeouts": grid.executor.timeouts,
}))
"""


def test_a_spinning_client_is_stopped_and_holds_no_one_back(tmp_path: Path) -> None:
    """Node 1000 computes forever in rounds 1 and 2 (GIL-holding Python and torch).

    It costs exactly one failure in each of those rounds: the other clients, those
    queued behind it on its worker included, reply in time, and the run process exits
    0 (a timeout that fired mid-step never aborts it with SIGABRT, exit 134).
    """
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "run"), "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failures"] == [0, 1, 1, 0]
    assert result["timeouts"] == 2
    assert all(
        r.startswith("node 1000: CallTimeout: no reply within 2 s") for r in result["reasons"]
    )


def test_ray_refuses_client_timeout_up_front(tiny: dict[str, Any], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedsim.cli.main import app
    from tests.conftest import write_yaml

    tiny["engine"] = {"name": "ray", "client_timeout_s": 8.0}
    path = write_yaml(tmp_path / "s.yaml", tiny)
    result = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "300"})
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(
        f"error: {path}: engine.client_timeout_s: engine 'ray' cannot stop a client"
    )
