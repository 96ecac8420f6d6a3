"""Start-to-finish in-process run: nodes, devices, clock, grid, then the ServerApp."""

from __future__ import annotations

import os

import torch
from flwr.app import Context, RecordDict, UserConfig
from flwr.clientapp import ClientApp

from fedsim.apps import load_apps
from fedsim.config.schema import Scenario, _EngineSection
from fedsim.engine.clock import VirtualClock
from fedsim.engine.collector import rounds_collector
from fedsim.engine.devices import sample_population
from fedsim.engine.executor import AUTO_BATCH
from fedsim.engine.flower_compat import SERVER_NODE_ID, set_task_identity
from fedsim.engine.inprocess_grid import InProcessGrid, node_contexts
from fedsim.engine.workers import WorkerPool, WorkerSpec, app_ref
from fedsim.training_device import check_devices, set_process_device

RUN_ID = 1


def build_grid(client_app: ClientApp, scenario: Scenario, run_config: UserConfig) -> InProcessGrid:
    """Create the in-process grid for a scenario's population (no ServerApp started).

    With ``engine.workers`` above 1 the grid's executor is a pool of worker processes:
    call :meth:`InProcessGrid.close` when the run is over.
    """
    set_task_identity(RUN_ID)
    contexts = node_contexts(scenario.data.num_clients, run_config, RUN_ID)
    devices = dict(
        zip(contexts, sample_population(scenario.system, len(contexts), scenario.seed), strict=True)
    )
    clock = VirtualClock(scenario.system, scenario.seed)
    trace = scenario.system.trace
    engine = scenario.engine
    workers = worker_count(engine)
    chosen = getattr(engine, "batch_clients", 0)  # inprocess only
    batch_clients = AUTO_BATCH if chosen == "auto" else int(chosen)
    pool = None
    # A client that can be abandoned runs in a worker process that can be killed: a
    # thread past its limit would keep the CPU (and the GIL) for the rest of the run.
    timeout = engine.client_timeout_s
    if workers > 1 or timeout is not None:
        devices_named = [engine.device] if isinstance(engine.device, str) else engine.device
        specs = [
            WorkerSpec(
                app_ref(client_app),
                scenario.data.num_clients,
                dict(run_config),
                RUN_ID,
                engine.threads_per_worker,
                devices_named[w % len(devices_named)],
                None,  # the pool stops late jobs itself (timeout_s)
                dict(os.environ),
                0 if timeout is not None else batch_clients,  # each client timed alone
            )
            for w in range(workers)
        ]
        pool = WorkerPool(specs, timeout_s=timeout)
    return InProcessGrid(
        client_app,
        contexts,
        devices,
        clock,
        scenario.system.deadline_s,
        RUN_ID,
        client_timeout_s=engine.client_timeout_s,
        min_online=1 if trace is None else trace.min_online,
        executor=pool,
        batch_clients=batch_clients,
    )


def worker_count(engine: _EngineSection) -> int:
    """``engine.workers`` as a number: ``auto`` is physical cores // threads per worker."""
    workers = getattr(engine, "workers", 1)
    if workers != "auto":
        return int(workers)
    try:
        import psutil

        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # psutil comes with Flower's dependencies, but is not ours
        cores = os.cpu_count() or 1
    return max(1, cores // engine.threads_per_worker)


def run_inprocess(scenario: Scenario, run_config: UserConfig) -> None:
    """Run fedsim's ServerApp with every node of the scenario in this process (or its workers)."""
    server_app, client_app = load_apps()
    check_devices(scenario.engine.device)
    threads = torch.get_num_threads()
    # Set deliberately: torch's default (one thread per core) collapses when another
    # process shares a core. This process trains the clients when there is no pool,
    # and evaluates and aggregates in any case.
    torch.set_num_threads(scenario.engine.threads_per_worker)
    set_process_device(None)
    grid = build_grid(client_app, scenario, run_config)
    context = Context(RUN_ID, SERVER_NODE_ID, {}, RecordDict(), dict(run_config))
    try:
        with rounds_collector():  # what lives as long as the run is not walked again
            server_app(grid, context)
    finally:
        grid.close()
        torch.set_num_threads(threads)
