"""The steps of one ServerApp run, in the order :func:`fedsim.server.app.main` takes them.

Set-up (the seeded initial model, the engine's reply checks, the strategy's offline
phase), then one of two loops: Flower's round loop (:mod:`fedsim.server.loop`,
resumable from a checkpoint) or the strategy's own ``start`` (asynchronous strategies),
each with the run's callbacks (central evaluation, the metrics log, checkpoints, ...),
then what is written once the rounds are done.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.compose import Composition
from fedsim.config.schema import Scenario
from fedsim.data.federated import FederatedData
from fedsim.data.label_noise import flipped_per_client
from fedsim.engine.clock import VirtualClock
from fedsim.engine.devices import sample_population
from fedsim.engine.observed_grid import ObservedGrid
from fedsim.engine.protocols import ClockedGrid, ReplyCheckingGrid
from fedsim.engine.ray_actors import replace_dead_actors, simulated_partitions
from fedsim.engine.reply_check import WorkBound
from fedsim.errors import Problem, ScenarioError
from fedsim.models import build_model
from fedsim.outputs.availability import write_trace_outputs
from fedsim.outputs.callbacks import CallbackList, RunInfo
from fedsim.outputs.metrics_log import MetricsLog, read_metrics
from fedsim.outputs.own_models import HoldsOwnModels
from fedsim.outputs.per_client import PER_CLIENT_FILE, keep_rounds
from fedsim.server.checkpoint import Checkpointer, restore_rng, resume_from
from fedsim.server.evaluation import CentralEvaluation
from fedsim.server.loop import LoopState, run_rounds
from fedsim.server.node_sampling import seed_sampling
from fedsim.server.recorder import RoundRecorder, build_callbacks, rng_kept, save_arrays

SHARING_FILE = "sharing.json"  # the offline phase's transfer log, if the strategy has one
LABEL_NOISE_FILE = "label_noise.json"  # per client: labels flipped by data.label_noise


def observed(grid: Grid, scenario: Scenario) -> ObservedGrid:
    """Flower's grid (Ray's, a deployment's): counted, checked and on the virtual clock."""
    replace_dead_actors()  # Flower's Ray simulation: a dead actor is one failure
    # In a simulation the nodes hold the scenario's partitions: replies are bounded by
    # their node's, as in-process (None in a deployment: nodes hold their own data).
    return ObservedGrid(
        grid,
        scenario.engine.client_timeout_s,
        VirtualClock(scenario.system, scenario.seed),
        sample_population(scenario.system, scenario.data.num_clients, scenario.seed),
        scenario.system.deadline_s,
        simulated_partitions(),
    )


def seed_everything(seed: int) -> None:
    """Seed Flower's node sampling, ``random``, numpy and torch, before anything."""
    seed_sampling(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def initial_model(scenario: Scenario, data: FederatedData) -> ArrayRecord:
    """The first global model (drawn from the seeded torch generator)."""
    model = build_model(
        scenario.model.name, scenario.model.params, data.input_shape, data.num_classes
    )
    return ArrayRecord(model.state_dict())


def arm_reply_checks(
    grid: Grid,
    initial: ArrayRecord,
    data: FederatedData,
    scenario: Scenario,
    composition: Composition,
) -> None:
    """Tell an engine that checks replies what a plausible one is (before aggregation)."""
    if not isinstance(grid, ReplyCheckingGrid):
        return
    sizes = [len(part) for part in data.parts]
    c = scenario.client
    poisson = c.dp is not None and c.dp.sampling == "poisson"
    work = WorkBound(c.local_epochs, c.local_steps, c.batch_size, poisson)
    grid.check_replies(initial, sizes, composition.reply_prefixes, work)


def offline_outputs(
    strategy: Strategy, scenario: Scenario, data: FederatedData, run_dir: Path
) -> None:
    """Run the strategy's one-time offline phase (AGC's sharing plan); log the data's.

    Its transfer log, and the labels ``data.label_noise`` flipped per client.
    """
    offline = getattr(strategy, "offline_phase", None)
    if callable(offline):
        try:
            transfer = offline(scenario.data, scenario.seed)
        except ValueError as exc:
            raise ScenarioError([Problem("data.sharing", str(exc))]) from None
        (run_dir / SHARING_FILE).write_text(json.dumps(transfer, indent=2) + "\n", "utf-8")
    if data.y_true is not None:  # how many labels each client has wrong
        flipped = flipped_per_client(data.y_true, data.y, data.parts)
        (run_dir / LABEL_NOISE_FILE).write_text(json.dumps(flipped, indent=2) + "\n", "utf-8")


def own_loop(
    strategy: Strategy, grid: Grid, initial: ArrayRecord, data: FederatedData, run: RunInfo
) -> tuple[RoundRecorder, CallbackList]:
    """Run a strategy that overrides ``start`` (it has no checkpoints) with the callbacks."""
    scenario = run.scenario
    if scenario.output.checkpoint_every is not None or run.resumed:
        raise ScenarioError([Problem("output.checkpoint_every", "this strategy runs its own loop")])
    owner = strategy if isinstance(strategy, HoldsOwnModels) else None  # LASGD's workers'
    evaluation = CentralEvaluation(scenario, data, owner)
    callbacks = build_callbacks(scenario, evaluation, MetricsLog(run.run_dir))
    recorder = RoundRecorder(scenario, grid, callbacks, evaluation, run)
    with rng_kept():
        callbacks.on_run_start(run)
    strategy.start(
        grid=grid, initial_arrays=initial, num_rounds=scenario.rounds, evaluate_fn=recorder
    )
    return recorder, callbacks


def flower_loop(
    strategy: Strategy, grid: Grid, initial: ArrayRecord, data: FederatedData, run: RunInfo
) -> tuple[RoundRecorder, CallbackList]:
    """Run Flower's round loop from round 1, or from the run directory's checkpoint."""
    scenario, run_dir = run.scenario, run.run_dir
    every = scenario.output.checkpoint_every
    checkpoint = resume_from(scenario, run_dir, strategy, grid) if run.resumed else None
    if checkpoint is None:
        log = MetricsLog(run_dir, keep_recent=every is not None)
        state = LoopState(initial)
    else:
        keep_rounds(run_dir / PER_CLIENT_FILE, checkpoint.server_round)
        log = MetricsLog.resumed(
            run_dir, checkpoint.metrics_bytes, checkpoint.recent_records, checkpoint.server_round
        )
        state = checkpoint.loop
    checkpointer = (
        None if every is None else Checkpointer(scenario, run_dir, strategy, grid, log, state)
    )
    owner = strategy if isinstance(strategy, HoldsOwnModels) else None
    evaluation = CentralEvaluation(scenario, data, owner)
    callbacks = build_callbacks(scenario, evaluation, log, checkpointer)
    recorder = RoundRecorder(scenario, grid, callbacks, evaluation, run)
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
    return recorder, callbacks


def finish(recorder: RoundRecorder, callbacks: CallbackList, grid: Grid, run: RunInfo) -> None:
    """The final model, the callbacks' run end, and a device trace's outputs."""
    if recorder.final_arrays is not None:
        save_arrays(recorder.final_arrays, run.run_dir / "final_arrays.npz")
    with rng_kept():
        callbacks.on_run_end(run, read_metrics(run.run_dir))
    if isinstance(grid, ClockedGrid) and grid.clock.events is not None:  # a device trace
        availability = [device.availability for device in grid.devices.values()]
        plots = run.scenario.output.plots
        write_trace_outputs(grid.clock.events, availability, run.run_dir, plots=plots)
