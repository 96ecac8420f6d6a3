"""``engine.workers``: worker processes change how fast a run is, never what it computes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from flwr.app import Context, Message

import fedsim
from fedsim import wire
from fedsim.client.app import app as client_app
from fedsim.config.schema import InProcessEngine
from fedsim.engine.executor import WorkerStartError
from fedsim.engine.inprocess_run import worker_count
from fedsim.engine.workers import AppRef, WorkerPool, WorkerSpec
from fedsim.errors import ScenarioError
from fedsim.outputs.metrics_log import read_metrics
from fedsim.server.checkpoint import checkpoint_path, load_checkpoint
from tests.conftest import same_final_arrays, strip_wall_clock, write_yaml

KILL_NODE, KILL_ROUND = 1002, 2


def _busy(tiny: dict[str, Any]) -> dict[str, Any]:
    """Stragglers, dropouts, injected failures and FedProx's proximal step."""
    tiny["rounds"] = 3
    tiny["data"]["num_clients"] = 6
    tiny["strategy"] = {"name": "fedprox", "params": {"proximal_mu": 0.1, "fraction_train": 0.7}}
    tiny["system"].update(straggle_prob=0.3, dropout_prob=0.15, failure_prob=0.15, deadline_s=1.0)
    return tiny


@pytest.fixture
def spied_pools(monkeypatch: pytest.MonkeyPatch) -> list[WorkerPool]:
    """Every WorkerPool a run starts (to check that its processes are gone afterwards)."""
    pools: list[WorkerPool] = []
    original = WorkerPool.__init__

    def init(self: WorkerPool, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        pools.append(self)

    monkeypatch.setattr(WorkerPool, "__init__", init)
    return pools


def _all_gone(pids: list[int]) -> bool:
    return not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)


def test_two_workers_give_the_metrics_of_one(
    tiny: dict[str, Any], tmp_path: Path, spied_pools: list[WorkerPool]
) -> None:
    one = fedsim.run(fedsim.load_scenario(_busy(tiny)), tmp_path / "one")
    tiny["engine"] = {"workers": 2}
    two = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "two")
    assert strip_wall_clock(two.metrics) == strip_wall_clock(one.metrics)
    assert same_final_arrays(one.run_dir, two.run_dir)
    stats = [(r.get("failures"), r.get("dropouts"), r.get("stragglers")) for r in one.metrics]
    assert any(f for f, _, _ in stats[1:]) and any(d for _, d, _ in stats[1:])  # it was busy
    assert len(spied_pools) == 1 and len(spied_pools[0].started) == 2
    assert _all_gone(spied_pools[0].started)


def killing_app(msg: Message, context: Context) -> Message:
    """fedsim's ClientApp, except that one node's process dies in round 2 (a crash)."""
    config = msg.content.config_records.get(wire.CONFIG)
    if (
        context.node_id == KILL_NODE
        and msg.metadata.message_type == "train"
        and config is not None
        and config.get(wire.SERVER_ROUND) == KILL_ROUND
    ):
        os.kill(os.getpid(), signal.SIGKILL)
    return client_app(msg, context)


def test_a_worker_killed_mid_round_fails_its_jobs_and_the_run_goes_on(
    tiny: dict[str, Any], tmp_path: Path, spied_pools: list[WorkerPool]
) -> None:
    from tests.conftest import run_with_client_app

    tiny["rounds"] = 3
    tiny["engine"] = {"workers": 2}
    grid = run_with_client_app(fedsim.load_scenario(tiny), killing_app, tmp_path / "run")
    try:
        pool = spied_pools[0]
        assert pool.restarts == 1
        records = read_metrics(tmp_path / "run")
        assert [r["round"] for r in records] == [0, 1, 2, 3]
        # Node 1002's worker (1002 % 2 == 0) also runs node 1000: its job fails too when
        # it was queued behind the crash, and succeeds when it ran first.
        failures = [r["failures"] for r in records[1:]]
        assert failures[0] == failures[2] == 0 and failures[1] in (1, 2)
        # The reason names the node and how its process died.
        assert any(
            reason.startswith(
                f"node {KILL_NODE}: WorkerDied: its worker process was killed by SIGKILL"
            )
            for reason in grid.telemetry.failure_reasons
        ), grid.telemetry.failure_reasons
    finally:
        grid.close()
    assert len(pool.started) == 3 and _all_gone(pool.started)


def test_lasgd_runs_on_workers_as_in_one_process(tiny: dict[str, Any], tmp_path: Path) -> None:
    """An asynchronous strategy: push/pull in virtual time, worker models in context.state."""
    tiny["client"]["local_steps"] = 1
    tiny["system"].update(slow_nodes=1, slow_node_slowdown=4.0, seconds_per_sample=0.004)
    tiny["rounds"] = 2
    tiny["strategy"] = {"name": "lasgd", "params": {"eval_interval_s": 1.0, "period": 3}}
    tiny["client"]["optimizer"].update(momentum=0.9)
    one = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "one")
    tiny["engine"] = {"workers": 2}
    two = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "two")
    assert strip_wall_clock(two.metrics) == strip_wall_clock(one.metrics)
    assert same_final_arrays(one.run_dir, two.run_dir)


@pytest.mark.slow
def test_sigkilled_workers_run_resumes_to_the_same_metrics(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """SCAFFOLD's control variates live in the workers' node states; checkpoints fetch them."""
    # Rounds to spare after the first checkpoint (round 2): on a loaded machine the
    # polling loop below can wake late, and the run must still be mid-way when killed.
    tiny["rounds"] = 8
    tiny["strategy"] = {"name": "scaffold", "params": {"option": "II", "fraction_train": 0.5}}
    tiny["system"].update(straggle_prob=0.2, deadline_s=1.0)
    tiny["output"]["checkpoint_every"] = 2
    tiny["engine"] = {"workers": 2}
    scenario = write_yaml(tmp_path / "s.yaml", tiny)
    cli = [sys.executable, "-c", "from fedsim.cli.main import main; main()", "run", "-q"]
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([*cli, str(scenario), "--out", str(run_dir)])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint_path(run_dir).exists():
            break
        time.sleep(0.02)
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(read_metrics(run_dir)) - 1 < tiny["rounds"], "finished before it was killed"
    assert load_checkpoint(run_dir).engine_state["node_states"]  # fetched from the workers
    # In this process (no second interpreter start): resumed on three workers (the
    # nodes' states move to their new owners), the whole run on one.
    resumed = fedsim.resume(run_dir, ["engine.workers=3"])
    tiny["engine"] = {"workers": 1}
    whole = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "whole")
    assert strip_wall_clock(resumed.metrics) == strip_wall_clock(whole.metrics)
    assert same_final_arrays(run_dir, whole.run_dir)
    # Orphaned workers see their pipe close and exit.
    deadline = time.monotonic() + 10
    while not _all_gone(children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _all_gone(children)


def test_a_worker_that_cannot_start_is_an_error_not_a_stream_of_failures() -> None:
    spec = WorkerSpec(AppRef("no_such_module_here", "app"), 2, {}, 1, 1, None, None, {})
    with pytest.raises(WorkerStartError, match=r"engine\.workers: a worker process ended"):
        WorkerPool([spec, spec])


def test_workers_start_without_rerunning_the_main_script() -> None:
    """A script that runs fedsim without `if __name__ == "__main__":` is not rerun per worker."""
    from multiprocessing import spawn

    from fedsim.engine.workers import main_module_hidden

    main = sys.modules["__main__"]
    before = (getattr(main, "__file__", None), getattr(main, "__spec__", None))
    with main_module_hidden():
        data = spawn.get_preparation_data("fedsim-worker")
        assert "init_main_from_path" not in data and "init_main_from_name" not in data
    assert (getattr(main, "__file__", None), getattr(main, "__spec__", None)) == before


def test_auto_workers_are_physical_cores_over_threads() -> None:
    cores = psutil.cpu_count(logical=False) or 1
    assert worker_count(InProcessEngine(workers="auto")) == max(1, cores)
    assert worker_count(InProcessEngine(workers="auto", threads_per_worker=cores + 1)) == 1
    assert worker_count(InProcessEngine()) == 1


@pytest.mark.parametrize("bad", [0, "many", True])
def test_a_bad_worker_count_is_one_problem_naming_the_key(tiny: dict[str, Any], bad: Any) -> None:
    tiny["engine"] = {"workers": bad}
    with pytest.raises(ScenarioError) as info:
        fedsim.load_scenario(tiny)
    assert [p.key for p in info.value.problems] == ["engine.workers"]


def test_workers_import_the_app_by_its_own_module() -> None:
    """This test module holds fedsim's app too; the worker still imports fedsim's module."""
    from fedsim.engine.workers import app_ref

    assert app_ref(client_app) == AppRef("fedsim.client.app", "app")
    assert app_ref(killing_app) == AppRef("tests.engine.test_workers", "killing_app")
    local = lambda msg, ctx: msg  # noqa: E731  (held by no module: sent pickled)
    assert app_ref(local) is local
