"""A SuperLink and three SuperNodes on loopback run a 2-round scenario end to end.

Each test starts every process by id (own session, own ``FLWR_HOME``, free ports) and
stops them all by id on the way out, failing if any process (Flower's children
included) is left behind.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import fedsim
from fedsim.data.node_data import write_partitions
from tests.conftest import TINY, write_yaml
from tests.deploy.loopback import (
    Cluster,
    cluster,
    descendants,
    free_port,
    is_alive,
    metrics_records,
    wait_for_port,
)

NODES = 3
SCENARIO: dict[str, Any] = {
    **TINY,
    "name": "loopback",
    "data": {**TINY["data"], "num_clients": NODES},
    "system": {},  # no stragglers: every node trains every round
}
FEDSIM = str(Path(sys.executable).with_name("fedsim"))
# Three ClientApp processes train at once on a small machine: one thread each.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RUN_TIMEOUT_S = 240  # a hang fails the test instead of blocking CI
# Half the messages straggle and a 1.5 s deadline cuts them: in-process, round 1 keeps
# 2 replies (1 straggler) and round 2 keeps 1 (2 stragglers).
ON_THE_CLOCK: dict[str, Any] = {
    **SCENARIO,
    "system": {**TINY["system"], "straggle_prob": 0.5, "deadline_s": 1.5},
}


def _start_federation(
    c: Cluster,
    tmp_path: Path,
    data_dir: Path | None = None,
    node_env: dict[str, str] | None = ONE_THREAD,
) -> str:
    """Start a SuperLink and the nodes; return the SuperLink's Control API address.

    The nodes reach the Fleet port; runs are submitted on the (loopback) control port,
    and may write run directories inside ``tmp_path`` only.
    """
    fleet, control = free_port(), free_port()
    fleet_address = f"127.0.0.1:{fleet}"
    cmd = [FEDSIM, "deploy", "superlink", "--port", str(fleet), "--control-port", str(control)]
    c.start("superlink", [*cmd, "--insecure", "--runs-root", str(tmp_path)])
    for k in range(NODES):
        cmd = [FEDSIM, "deploy", "node", "--partition-id", str(k), "--num-partitions", str(NODES)]
        cmd += ["--superlink", fleet_address, "--port", str(free_port()), "--insecure"]
        if data_dir is not None:
            cmd += ["--data-path", str(data_dir / f"partition-{k}.npz")]
        c.start(f"node-{k}", cmd, env=node_env)
    wait_for_port(control, timeout_s=60)
    return f"127.0.0.1:{control}"


def _submit(c: Cluster, scenario: Path, address: str, run_dir: Path, *extra: str) -> None:
    cmd = [FEDSIM, "deploy", "run", str(scenario), "--superlink", address, "--insecure"]
    c.start("run", [*cmd, "--out", str(run_dir), *extra])


def _finish(c: Cluster) -> None:
    rc = c.procs["run"].wait(timeout=RUN_TIMEOUT_S)
    assert rc == 0, f"fedsim deploy run failed:\n{c.log('run')}\n{c.log('superlink')[-3000:]}"


def test_three_nodes_run_two_rounds_as_the_simulation_does(tmp_path: Path) -> None:
    """The deployed run completes, writes its run directory, and ends at the weights of
    an in-process run of the same scenario (same seeds per node and round; only the
    order in which FedAvg sums the replies may differ).

    The scenario has stragglers and a deadline: the deployed grid keeps the virtual
    clock as in-process, so each round cuts the same replies (fates drawn per seed,
    dispatch and the partition each node says it holds) at the same virtual times.

    The nodes start as docs/deployment.md says, with no thread settings of the test's:
    the run config carries the scenario's ``engine.threads_per_worker`` to every
    ClientApp (torch's default of a thread per core once gave max |Δw| = 0.066)."""
    scenario = write_yaml(tmp_path / "scenario.yaml", ON_THE_CLOCK)
    run_dir = tmp_path / "deployed"
    with cluster(tmp_path) as c:
        address = _start_federation(c, tmp_path, node_env=None)
        _submit(c, scenario, address, run_dir, "--quiet")
        _finish(c)

    records = metrics_records(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    assert all(r["participants"] + r["stragglers"] == NODES for r in records[1:])
    assert all(r["bytes_up"] > 0 and r["failures"] == 0 for r in records[1:])
    assert {"summary.json", "scenario.resolved.yaml", "flower.log"} <= {
        p.name for p in run_dir.iterdir()
    }

    reference = fedsim.run(fedsim.load_scenario(ON_THE_CLOCK), tmp_path / "inprocess")
    assert sum(r["stragglers"] for r in reference.metrics) > 0  # the test needs some
    for got, want in zip(records, reference.metrics, strict=True):
        for key in ("participants", "stragglers", "dropouts", "virtual_time_s"):
            assert got[key] == want[key], (got["round"], key)
    deployed = np.load(run_dir / "final_arrays.npz")
    simulated = np.load(reference.run_dir / "final_arrays.npz")
    assert sorted(deployed.files) == sorted(simulated.files)
    diff = max(float(np.abs(deployed[k] - simulated[k]).max()) for k in deployed.files)
    print(f"max |deployed - in-process| over final weights: {diff:.3g}")
    assert diff <= 1e-6
    for got, want in zip(records, reference.metrics, strict=True):
        assert abs(got["eval_loss"] - want["eval_loss"]) <= 1e-6


def test_a_node_killed_after_round_one_leaves_the_run_to_the_others(tmp_path: Path) -> None:
    """Node 2 dies (SIGKILL, no goodbye) once round 1 is logged. Round 2 goes on with
    the two others (``--min-nodes 2``); the dead node's message comes back as a
    dropout when the SuperLink stops hearing its heartbeat. The nodes read their data
    from the files ``fedsim deploy split`` writes (``--data-path``)."""
    scenario = write_yaml(tmp_path / "scenario.yaml", SCENARIO)
    parts = tmp_path / "parts"
    loaded = fedsim.load_scenario(SCENARIO)
    write_partitions(loaded.data, loaded.seed, parts)  # what `fedsim deploy split` calls
    run_dir = tmp_path / "deployed"
    with cluster(tmp_path) as c:
        address = _start_federation(c, tmp_path, data_dir=parts)
        _submit(c, scenario, address, run_dir, "--quiet", "--min-nodes", "2")
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not any(r["round"] == 1 for r in metrics_records(run_dir)):
            assert c.procs["run"].poll() is None, c.log("run")
            assert time.monotonic() < deadline, "round 1 never finished"
            time.sleep(0.2)
        victim = c.procs["node-2"].pid
        tree = {victim} | descendants({victim})
        c.stop("node-2", signal.SIGKILL)
        c.procs["node-2"].wait(timeout=10)
        _finish(c)
        assert not any(is_alive(p) for p in tree)

    records = metrics_records(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    assert records[1]["participants"] == NODES
    assert (records[2]["participants"], records[2]["dropouts"]) == (NODES - 1, 1)
    assert records[2]["failures"] == 0
    assert (run_dir / "summary.json").exists()
