"""fedsim's ServerApp: ``fedsim.server.app:app``.

Reads the scenario from ``run_config["scenario"]`` (a run submitted to a SuperLink
first passes the operator's :class:`~fedsim.submission_policy.SubmissionPolicy`),
builds the strategy by registry name and runs Flower's round loop (:mod:`fedsim.server.loop`:
the hooks of ``Strategy.start`` in its order, resumable from a checkpoint; strategies
that override ``start`` run their own), with a central evaluation on the held-out test
set that also writes one ``metrics.jsonl`` record per round (the engine's telemetry supplies
participants, stragglers, bytes and time).
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedsim import wire
from fedsim.compose import compose
from fedsim.data.federated import federated_data
from fedsim.data.label_noise import flipped_per_client
from fedsim.engine.observed_grid import ObservedGrid
from fedsim.engine.protocols import (
    ClockedGrid,
    ObservedRounds,
    ReplyCheckingGrid,
)
from fedsim.engine.ray_actors import replace_dead_actors
from fedsim.engine.reply_check import WorkBound
from fedsim.errors import Problem, ScenarioError
from fedsim.models import build_model
from fedsim.outputs.availability import write_trace_outputs
from fedsim.outputs.callbacks import (
    RunInfo,
)
from fedsim.outputs.metrics_log import (
    MetricsLog,
    read_metrics,
)
from fedsim.outputs.own_models import HoldsOwnModels
from fedsim.outputs.per_client import (
    PER_CLIENT_FILE,
    keep_rounds,
)
from fedsim.run_config import scenario_from_run_config
from fedsim.server.checkpoint import (
    Checkpointer,
    restore_rng,
    resume_from,
)
from fedsim.server.loop import LoopState, run_rounds, uses_flower_loop
from fedsim.server.recorder import RoundRecorder, build_callbacks, rng_kept, save_arrays
from fedsim.submission_policy import SubmissionPolicy

app = ServerApp()
SHARING_FILE = "sharing.json"  # the offline phase's transfer log, if the strategy has one
LABEL_NOISE_FILE = "label_noise.json"  # per client: labels flipped by data.label_noise
WAIT_NOTICE_S = 5.0  # a wait on nodes longer than this says so (then every 30 s)
logger = logging.getLogger(__name__)


def wait_for_nodes(
    grid: Grid, count: int, poll_s: float = 1.0, notice_s: float = WAIT_NOTICE_S
) -> None:
    """Block until ``count`` nodes are connected (deployed SuperNodes come up one by one).

    A deployment that lets later rounds go on with fewer nodes (a lower
    ``min_available_nodes``) still starts its first round with the whole population.
    A wait longer than ``notice_s`` logs a warning (and again every 30 s), so a run
    waiting for nodes that never come says so.
    """
    started = time.monotonic()
    next_notice = notice_s
    while (connected := len(list(grid.get_node_ids()))) < count:
        waited = time.monotonic() - started
        if waited >= next_notice:
            logger.warning(
                "waiting for nodes: %d of %d connected after %.0f s", connected, count, waited
            )
            next_notice = waited + 30.0
        time.sleep(poll_s)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the scenario's strategy for ``rounds`` rounds (from a checkpoint if resuming)."""
    flower_grid = not isinstance(grid, ObservedRounds)
    if flower_grid:
        # Flower's own grid: the run came through a SuperLink (deployment, or the ray
        # engine's private one), so its config is the submitter's. Check it before the
        # scenario is loaded, which imports what it names.
        SubmissionPolicy.from_environ().check(context.run_config)
    scenario = scenario_from_run_config(context.run_config)
    # Every check of `fedsim validate` (done already when this process ran it).
    composition = compose(scenario)
    run_dir = Path(str(context.run_config.get(wire.RUN_DIR) or "."))
    if flower_grid:  # count and check what passes
        grid = ObservedGrid(grid, scenario.engine.client_timeout_s)
        replace_dead_actors()  # Flower's Ray simulation: a dead actor is one failure
    wait_for_nodes(grid, int(context.run_config.get(wire.RUN_WAIT_NODES, 0)))
    resume = bool(context.run_config.get(wire.RUN_RESUME, False))
    # Flower samples nodes with the global `random` module; seed everything up front.
    random.seed(scenario.seed)
    np.random.seed(scenario.seed % 2**32)
    torch.manual_seed(scenario.seed)
    data = federated_data(scenario.data, scenario.seed)
    initial = ArrayRecord(
        build_model(
            scenario.model.name, scenario.model.params, data.input_shape, data.num_classes
        ).state_dict()
    )
    if isinstance(grid, ReplyCheckingGrid):  # every reply checked before aggregation
        sizes = [len(part) for part in data.parts]
        c = scenario.client
        poisson = c.dp is not None and c.dp.sampling == "poisson"
        work = WorkBound(c.local_epochs, c.local_steps, c.batch_size, poisson)
        grid.check_replies(initial, sizes, composition.reply_prefixes, work)
    strategy = composition.build_strategy()
    offline = getattr(strategy, "offline_phase", None)
    if callable(offline):  # a one-time data phase before round 1 (AGC's sharing plan)
        try:
            transfer = offline(scenario.data, scenario.seed)
        except ValueError as exc:
            raise ScenarioError([Problem("data.sharing", str(exc))]) from None
        text = json.dumps(transfer, indent=2) + "\n"
        (run_dir / SHARING_FILE).write_text(text, encoding="utf-8")
    if data.y_true is not None:  # data.label_noise: how many labels each client has wrong
        flipped = flipped_per_client(data.y_true, data.y, data.parts)
        text = json.dumps(flipped, indent=2) + "\n"
        (run_dir / LABEL_NOISE_FILE).write_text(text, encoding="utf-8")
    every = scenario.output.checkpoint_every
    run = RunInfo(run_dir, scenario, resumed=resume)
    owner = strategy if isinstance(strategy, HoldsOwnModels) else None
    if not uses_flower_loop(strategy):
        # Asynchronous strategies own their loop; they run as written, without checkpoints.
        if every is not None or resume:
            raise ScenarioError(
                [Problem("output.checkpoint_every", "this strategy runs its own loop")]
            )
        callbacks = build_callbacks(scenario, MetricsLog(run_dir))
        recorder = RoundRecorder(scenario, data, grid, callbacks, run, owner)
        with rng_kept():
            callbacks.on_run_start(run)
        strategy.start(
            grid=grid, initial_arrays=initial, num_rounds=scenario.rounds, evaluate_fn=recorder
        )
    else:
        checkpoint = resume_from(scenario, run_dir, strategy, grid) if resume else None
        if checkpoint is None:
            log = MetricsLog(run_dir, keep_recent=every is not None)
            state = LoopState(initial)
        else:
            keep_rounds(run_dir / PER_CLIENT_FILE, checkpoint.server_round)
            log = MetricsLog.resumed(
                run_dir,
                checkpoint.metrics_bytes,
                checkpoint.recent_records,
                checkpoint.server_round,
            )
            state = checkpoint.loop
        checkpointer = (
            None if every is None else Checkpointer(scenario, run_dir, strategy, grid, log, state)
        )
        callbacks = build_callbacks(scenario, log, checkpointer)
        recorder = RoundRecorder(scenario, data, grid, callbacks, run, owner)
        with rng_kept():
            callbacks.on_run_start(run)
        if checkpoint is None:
            recorder(0, initial)
        else:
            recorder.final_arrays = state.arrays
            restore_rng(checkpoint.rng_state)  # last: building models above drew from torch
        run_rounds(
            strategy,
            grid,
            state,
            first_round=1 if checkpoint is None else checkpoint.server_round + 1,
            num_rounds=scenario.rounds,
            evaluate_fn=recorder,
            strategy_metrics=recorder.strategy_metrics,
        )
    if recorder.final_arrays is not None:
        save_arrays(recorder.final_arrays, run_dir / "final_arrays.npz")
    with rng_kept():
        callbacks.on_run_end(run, read_metrics(run_dir))
    if isinstance(grid, ClockedGrid) and grid.clock.events is not None:  # a device trace
        availability = [device.availability for device in grid.devices.values()]
        write_trace_outputs(grid.clock.events, availability, run_dir, plots=scenario.output.plots)
