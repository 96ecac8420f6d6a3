"""Start-to-finish in-process run: nodes, devices, clock, grid, then the ServerApp."""

from __future__ import annotations

import gc
from pathlib import Path

from flwr.app import Context, RecordDict, UserConfig
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedsim import wire
from fedsim.engine.clock import VirtualClock
from fedsim.engine.devices import sample_population
from fedsim.engine.flower_compat import SERVER_NODE_ID, set_task_identity
from fedsim.engine.inprocess import InProcessGrid, node_contexts
from fedsim.outputs.availability import EVENTS_FILE, PLOT_FILE, plot_availability, write_events
from fedsim.scenario import InProcessEngine, Scenario

RUN_ID = 1


def build_grid(client_app: ClientApp, scenario: Scenario, run_config: UserConfig) -> InProcessGrid:
    """Create the in-process grid for a scenario's population (no ServerApp started)."""
    set_task_identity(RUN_ID)
    contexts = node_contexts(scenario.data.num_clients, run_config, RUN_ID)
    devices = dict(
        zip(contexts, sample_population(scenario.system, len(contexts), scenario.seed), strict=True)
    )
    clock = VirtualClock(scenario.system, scenario.seed)
    trace = scenario.system.trace
    return InProcessGrid(
        client_app,
        contexts,
        devices,
        clock,
        scenario.system.deadline_s,
        RUN_ID,
        client_timeout_s=scenario.engine.client_timeout_s,
        min_online=1 if trace is None else trace.min_online,
        batch_clients=scenario.engine.batch_clients
        if isinstance(scenario.engine, InProcessEngine)
        else 0,
    )


def run_inprocess(
    server_app: ServerApp, client_app: ClientApp, scenario: Scenario, run_config: UserConfig
) -> None:
    """Run ``server_app`` with every node of the scenario in this process."""
    grid = build_grid(client_app, scenario, run_config)
    context = Context(RUN_ID, SERVER_NODE_ID, {}, RecordDict(), dict(run_config))
    # Everything alive now (torch, Flower, the data: ~250k objects) lives as long as the
    # run; frozen, Python's full collections stop walking it (each took ~0.1 s, about one
    # per thousand small client updates). Reference counting still frees what dies.
    gc.freeze()
    try:
        server_app(grid, context)
    finally:
        gc.unfreeze()
    if grid.clock.events is not None:
        _write_trace_outputs(grid, scenario, Path(str(run_config[wire.RUN_DIR])))


def _write_trace_outputs(grid: InProcessGrid, scenario: Scenario, run_dir: Path) -> None:
    """With a device trace: the clock's log and a plot of availability over time."""
    events = grid.clock.events or []
    write_events(events, run_dir / EVENTS_FILE)
    if scenario.output.plots:
        availability = [device.availability for device in grid.devices.values()]
        plot_availability(availability, events, run_dir / "plots" / PLOT_FILE)
