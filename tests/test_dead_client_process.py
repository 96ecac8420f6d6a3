"""A client that kills fedsim's own process (``engine.workers: 1``) is named (issue #33, item 6).

With one worker the clients run in the run process itself: ``os._exit(7)``, SIGSEGV or
SIGKILL there ends it at once. ``fedsim run`` (:mod:`fedsim.cli.supervisor`) then
prints one line naming the node, the round and how the process died, marks the run
directory crashed and exits 1; the run can be resumed or rerun as after any crash.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fedsim import run_lock
from fedsim.cli.supervisor import died_message, wants_supervisor
from fedsim.engine.node_contexts import NODE_ID_OFFSET
from fedsim.process_note import CLIENT, FINISHED, NO_ROUND, SERVER, ProcessNote
from fedsim.run_directory import CRASH_FILE
from fedsim.run_lock import RunLock
from tests.conftest import TINY, strip_wall_clock, write_yaml

FEDSIM = [sys.executable, "-c", "from fedsim.cli.main import main; main()"]
DYING_PARTITION, DYING_ROUND = 1, 2
PLUGIN = '''
import os
import signal
from pathlib import Path

import fedsim
from flwr.serverapp.strategy import FedAvg

MARKER = Path(os.environ["DYING_MARKER"])
HOW = os.environ["DYING_HOW"]
PARTITION, ROUND = int(os.environ["DYING_PARTITION"]), int(os.environ["DYING_ROUND"])


@fedsim.register_step("dies-once")
class DiesOnce(fedsim.LocalStep):
    """One partition ends its own process in one round, once (then a marker exists)."""

    def __init__(self, inputs):
        super().__init__(inputs)
        due = inputs.partition_id == PARTITION and inputs.config["server-round"] == ROUND
        if due and not MARKER.exists():
            MARKER.touch()
            if HOW == "exit":
                os._exit(7)
            os.kill(os.getpid(), getattr(signal, HOW))


@fedsim.register_strategy("dying-avg")
class DyingAvg(FedAvg):
    def configure_train(self, server_round, arrays, config, grid):
        config["local-step"] = "dies-once"
        return super().configure_train(server_round, arrays, config, grid)
'''


def _work(
    tmp_path: Path, how: str, *, checkpoint_every: int | None = None
) -> tuple[Path, dict[str, str]]:
    """A folder holding the plugin and its scenario; the environment that arms it."""
    work = tmp_path / "work"
    (work / "dying").mkdir(parents=True)
    (work / "dying" / "__init__.py").write_text(PLUGIN)
    scenario: dict[str, Any] = {
        **TINY,
        "rounds": 3,
        "plugins": ["dying"],
        "strategy": {"name": "dying-avg", "params": {"min_available_nodes": 4}},
    }
    if checkpoint_every is not None:
        scenario["output"] = {**TINY["output"], "checkpoint_every": checkpoint_every}
    write_yaml(work / "s.yaml", scenario)
    env = {
        **os.environ,
        "DYING_MARKER": str(tmp_path / "died"),
        "DYING_HOW": how,
        "DYING_PARTITION": str(DYING_PARTITION),
        "DYING_ROUND": str(DYING_ROUND),
        "OMP_NUM_THREADS": "1",
    }
    return work, env


def _fedsim(work: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FEDSIM, *args], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )


def _assert_named(done: subprocess.CompletedProcess[str], how: str, run_dir: Path) -> None:
    """One line naming node, round and ending; exit 1; the directory marked crashed."""
    assert done.returncode == 1, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    node = NODE_ID_OFFSET + DYING_PARTITION
    assert lines[0].startswith(
        f"error: node {node} died in round {DYING_ROUND} (train): fedsim's run process {how} "
    ), lines[0]
    assert f"{run_dir.resolve()} is marked crashed" in lines[0]
    crash = json.loads((run_dir / CRASH_FILE).read_text())
    assert crash["error"] == "RunProcessDied" and f"node {node}" in crash["message"]


@pytest.mark.slow  # four fedsim processes
def test_a_client_that_exits_names_itself_and_the_run_resumes_from_its_checkpoint(
    tmp_path: Path,
) -> None:
    work, env = _work(tmp_path, "exit", checkpoint_every=1)
    died = _fedsim(work, env, "run", "-q", "s.yaml", "--out", "run")
    _assert_named(died, "exited with code 7", work / "run")
    assert "continues it from its last checkpoint" in died.stderr
    resumed = _fedsim(work, env, "run", "-q", "--resume", "run")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = _fedsim(work, env, "run", "-q", "s.yaml", "--out", "whole")  # the marker is there
    assert whole.returncode == 0, whole.stderr[-3000:]
    records = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(x) for x in (work / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert strip_wall_clock(records) == strip_wall_clock(reference)
    assert not (work / "run" / CRASH_FILE).exists()


@pytest.mark.slow  # two fedsim processes each
@pytest.mark.parametrize(
    ("how", "ending"), [("SIGSEGV", "was killed by SIGSEGV"), ("SIGKILL", "was killed by SIGKILL")]
)
def test_a_client_killed_by_a_signal_names_itself_and_the_run_can_be_rerun(
    tmp_path: Path, how: str, ending: str
) -> None:
    work, env = _work(tmp_path, how)
    died = _fedsim(work, env, "run", "-q", "s.yaml", "--out", "run")
    _assert_named(died, ending, work / "run")
    assert "runs it again from round 0" in died.stderr  # no checkpoint
    again = _fedsim(work, env, "run", "-q", "s.yaml", "--out", "run")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "replaced the crashed run" in again.stderr
    records = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert [r["failures"] for r in records[1:]] == [0, 0, 0]


# ------------------------------------------------------------------ the pieces


def test_only_run_is_supervised() -> None:
    linux = sys.platform.startswith("linux")
    assert wants_supervisor(["run", "s.yaml"]) is linux
    assert wants_supervisor(["-v", "run", "--resume", "r"]) is linux
    assert not wants_supervisor(["validate", "run.yaml"])
    assert not wants_supervisor(["--version"])


def test_the_note_says_who_was_running_and_the_message_names_them(tmp_path: Path) -> None:
    note = ProcessNote()
    assert note.read().phase == SERVER and note.read().run_dir is None
    note.set_run_dir(tmp_path)
    note.client_call(1003, 4, "evaluate")
    seen = note.read()
    assert (seen.phase, seen.node, seen.nodes, seen.server_round) == (CLIENT, 1003, 1, 4)
    assert seen.message_type == "evaluate" and seen.run_dir == tmp_path.resolve()
    assert died_message(-signal.SIGSEGV, seen).startswith(
        "node 1003 died in round 4 (evaluate): fedsim's run process was killed by SIGSEGV"
    )
    note.server_work()
    assert died_message(-signal.SIGKILL, note.read()) == (
        "fedsim's run process was killed by SIGKILL outside any client call "
        "(the last was in round 4)"
    )
    note.client_call(1000, NO_ROUND, "train", nodes=8)
    assert died_message(7, note.read()).startswith(
        "8 nodes trained together (from node 1000) died (train): fedsim's run process "
        "exited with code 7"
    )
    note.set_run_dir(None)
    note.finished()
    assert note.read().phase == FINISHED and note.read().run_dir is None


def test_a_forked_child_writes_the_note_its_parent_reads() -> None:
    note = ProcessNote()
    child = os.fork()
    if child == 0:  # pragma: no cover  (the child)
        note.client_call(1002, 2, "train")
        os._exit(0)
    os.waitpid(child, 0)
    assert note.read().node == 1002 and note.read().server_round == 2


def test_a_lock_whose_named_holder_died_is_taken_once_its_child_lets_go(tmp_path: Path) -> None:
    """A SIGKILLed supervisor's child holds the lock a moment longer: it is waited for."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    ready, go = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover  (the child: the run process of a dead supervisor)
        run_lock.name_owner(gone.pid)
        RunLock(tmp_path).acquire()
        os.write(go, b"x")
        time.sleep(0.5)
        os._exit(0)  # the kernel drops the lock
    os.read(ready, 1)
    try:
        with RunLock(tmp_path):  # without the wait: RunDirectoryBusy naming a dead pid
            assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    finally:
        os.waitpid(child, 0)


@pytest.mark.slow  # two fedsim processes
@pytest.mark.parametrize(
    ("sent", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)]
)
def test_a_signal_to_fedsim_stops_the_run_as_it_did_before_the_supervisor(
    tmp_path: Path, sent: int, code: int
) -> None:
    """``kill -INT/-TERM PID`` reaches the run (the supervisor passes it on); fedsim ends
    as one process would: Ctrl-C's exit 130 with a CRASHED marker, SIGTERM's death.
    No run process is left behind."""
    import psutil

    scenario = write_yaml(tmp_path / "s.yaml", {**TINY, "rounds": 2000})
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [*FEDSIM, "run", "-q", str(scenario), "--out", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run_dir / "metrics.jsonl"
    while (
        proc.poll() is None
        and len(metrics.read_text().splitlines() if metrics.exists() else []) < 2
    ):
        time.sleep(0.05)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "fedsim ran in one process"
    proc.send_signal(sent)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "died" not in err  # a stop, not a crash
    psutil.wait_procs(children, timeout=10)
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    if sent == signal.SIGINT:
        assert json.loads((run_dir / CRASH_FILE).read_text())["error"] == "KeyboardInterrupt"


def test_a_job_process_that_dies_stops_a_comparison_with_one_line(tmp_path: Path) -> None:
    """``--jobs 2``: the dying client takes its job process with it, not the comparison's."""
    work, env = _work(tmp_path, "exit")
    scenario = {
        **TINY,
        "rounds": 3,
        "seeds": [1, 2],
        "plugins": ["dying"],
        "strategy": {"name": "dying-avg", "params": {"min_available_nodes": 4}},
    }
    write_yaml(work / "s.yaml", scenario)
    done = subprocess.run(
        [*FEDSIM, "run", "-q", "s.yaml", "--jobs", "2", "--out", "out"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "job process" in errors[0], done.stderr
