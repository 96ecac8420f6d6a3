"""fedsim's ServerApp: ``fedsim.server:app``.

Reads the scenario from ``run_config["scenario"]``, builds the strategy by registry
name and runs Flower's round loop (:mod:`fedsim.rounds`: the hooks of
``Strategy.start`` in its order, resumable from a checkpoint; strategies that override
``start`` run their own), with a central evaluation on the held-out test set that also
writes one ``metrics.jsonl`` record per round (the engine's telemetry supplies
participants, stragglers, bytes and time).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedsim import wire
from fedsim.checkpoint import (
    Checkpoint,
    ResumableGrid,
    capture_rng,
    load_checkpoint,
    restore_rng,
    restore_strategy,
    save_checkpoint,
    strategy_state,
)
from fedsim.data.federated import FederatedData, federated_data
from fedsim.engine.observed_grid import ObservedGrid
from fedsim.engine.telemetry import Telemetry
from fedsim.errors import Problem, ScenarioError, UnknownNameError
from fedsim.evaluation import evaluate_model
from fedsim.models import build_model
from fedsim.outputs.metrics_log import MetricsLog
from fedsim.resume_rules import check_resume
from fedsim.rounds import LoopState, run_rounds, uses_flower_loop
from fedsim.run_config import scenario_from_run_config
from fedsim.scenario import Scenario
from fedsim.scenario_loading import accepted_params
from fedsim.strategies import STRATEGIES

app = ServerApp()
SHARING_FILE = "sharing.json"  # the offline phase's transfer log, if the strategy has one


def strategy_defaults(num_clients: int) -> dict[str, Any]:
    """fedsim's defaults for Flower strategy parameters the scenario leaves unset.

    Central evaluation replaces Flower's federated evaluation by default
    (``fraction_evaluate=0``), a round waits until the whole population is connected
    (``min_available_nodes``), so a deployment's first round does not train fewer
    clients than a simulation's, and strategies that read a training loss read
    fedsim's ``train-loss`` metric.
    """
    return {
        "fraction_evaluate": 0.0,
        "min_available_nodes": num_clients,
        "train_loss_key": wire.TRAIN_LOSS,  # QFedAvg reads the clients' training loss
    }


def build_strategy(scenario: Scenario) -> Strategy:
    """Instantiate the scenario's strategy with its params (plus fedsim's defaults)."""
    try:
        cls = STRATEGIES.get(scenario.strategy.name)
    except UnknownNameError as exc:
        raise ScenarioError([Problem("strategy.name", f"unknown strategy: {exc}")]) from None
    # Follows **kwargs into the Flower base class, so subclasses get the defaults too.
    accepted = accepted_params(cls) or []
    params = {
        k: v for k, v in strategy_defaults(scenario.data.num_clients).items() if k in accepted
    }
    params.update(scenario.strategy.params)
    try:
        strategy = cls(**params)
    except (TypeError, ValueError) as exc:
        raise ScenarioError([Problem("strategy.params", str(exc))]) from None
    if not isinstance(strategy, Strategy):
        raise ScenarioError([Problem("strategy.name", f"{cls!r} is not a flwr Strategy")])
    return strategy


class RoundRecorder:
    """Central evaluation (``evaluate_fn``) that also logs each round's record."""

    def __init__(self, scenario: Scenario, data: FederatedData, grid: Grid, log: MetricsLog):
        self.scenario = scenario
        self.data = data
        self.grid = grid
        self.log = log
        self.telemetry: Telemetry = getattr(grid, "telemetry", None) or Telemetry()
        self.model = build_model(
            scenario.model.name, scenario.model.params, data.input_shape, data.num_classes
        )
        self.started = time.perf_counter()
        self.final_arrays: ArrayRecord | None = None

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Evaluate on the test set (every ``output.evaluate_every`` rounds) and log."""
        every = self.scenario.output.evaluate_every
        evaluate = server_round % every == 0 or server_round == self.scenario.rounds
        loss = acc = None
        if evaluate:
            self.model.load_state_dict(arrays.to_torch_state_dict())
            loss, acc = evaluate_model(
                self.model, self.data.x_test, self.data.y_test, self.scenario.client.eval_batch_size
            )
        self.final_arrays = arrays
        record: dict[str, Any] = {
            "round": server_round,
            "virtual_time_s": getattr(self.grid, "virtual_time_s", None),
            "wall_time_s": time.perf_counter() - self.started,
            "eval_loss": loss,
            "eval_accuracy": acc,
        }
        record.update(self.telemetry.pop().as_record())
        diagnostics = getattr(self.model, "diagnostics", None)
        if evaluate and callable(diagnostics):
            # Model-specific numbers (e.g. how spread out class embeddings are).
            record["diagnostics"] = diagnostics()
        self.log.append(record)
        if loss is None or acc is None:
            return None
        return MetricRecord({wire.EVAL_LOSS: loss, wire.EVAL_ACCURACY: acc})


def save_arrays(arrays: ArrayRecord, path: Path) -> None:
    """Write a model's arrays as ``.npz`` (name -> ndarray)."""
    np.savez(path, **{k: v.numpy() for k, v in arrays.items()})  # type: ignore[arg-type]


class Checkpointer:
    """``after_round`` hook: a checkpoint every ``output.checkpoint_every`` rounds."""

    def __init__(
        self, scenario: Scenario, run_dir: Path, strategy: Strategy, grid: Grid, log: MetricsLog
    ) -> None:
        if not isinstance(grid, ResumableGrid):
            raise ScenarioError(
                [Problem("output.checkpoint_every", "this engine cannot checkpoint its nodes")]
            )
        self.every = scenario.output.checkpoint_every or 1
        self.scenario = scenario.model_dump(mode="json")
        self.run_dir, self.strategy, self.grid, self.log = run_dir, strategy, grid, log

    def __call__(self, server_round: int, state: LoopState) -> None:
        """Save the run's state if ``server_round`` is a multiple of ``every``."""
        if server_round % self.every:
            return
        self.log.sync()  # the log the checkpoint counts on is on disk before it is
        save_checkpoint(
            self.run_dir,
            Checkpoint(
                server_round=server_round,
                loop=state,
                strategy_state=strategy_state(self.strategy),
                engine_state=self.grid.engine_state(),
                rng_state=capture_rng(),
                metrics_bytes=self.log.size,
                scenario=self.scenario,
                recent_records=self.log.take_recent(),
            ),
        )


def _resume(scenario: Scenario, run_dir: Path, strategy: Strategy, grid: Grid) -> Checkpoint:
    """Load the run's checkpoint and put strategy and engine back in its state."""
    checkpoint = load_checkpoint(run_dir)
    if not isinstance(grid, ResumableGrid):
        raise ScenarioError([Problem("engine.name", "this engine cannot resume a run")])
    # `fedsim run --resume` checked this already; a resume requested through Flower's
    # run config (a deployment) is held to the same rules here.
    check_resume(checkpoint.scenario, scenario.model_dump(mode="json"), checkpoint.server_round)
    restore_strategy(strategy, checkpoint.strategy_state)
    grid.restore_engine_state(checkpoint.engine_state)
    return checkpoint


def wait_for_nodes(grid: Grid, count: int, poll_s: float = 1.0) -> None:
    """Block until ``count`` nodes are connected (deployed SuperNodes come up one by one).

    A deployment that lets later rounds go on with fewer nodes (a lower
    ``min_available_nodes``) still starts its first round with the whole population.
    """
    while len(list(grid.get_node_ids())) < count:
        time.sleep(poll_s)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the scenario's strategy for ``rounds`` rounds (from a checkpoint if resuming)."""
    scenario = scenario_from_run_config(context.run_config)
    run_dir = Path(str(context.run_config.get(wire.RUN_DIR) or "."))
    if not isinstance(getattr(grid, "telemetry", None), Telemetry):
        grid = ObservedGrid(grid)  # Flower's own grid (ray, deployment): count what passes
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
    strategy = build_strategy(scenario)
    offline = getattr(strategy, "offline_phase", None)
    if callable(offline):  # a one-time data phase before round 1 (AGC's sharing plan)
        try:
            transfer = offline(data, scenario.seed)
        except ValueError as exc:
            raise ScenarioError([Problem("strategy.params", str(exc))]) from None
        text = json.dumps(transfer, indent=2) + "\n"
        (run_dir / SHARING_FILE).write_text(text, encoding="utf-8")
    every = scenario.output.checkpoint_every
    if not uses_flower_loop(strategy):
        # Asynchronous strategies own their loop; they run as written, without checkpoints.
        if every is not None or resume:
            raise ScenarioError(
                [Problem("output.checkpoint_every", "this strategy runs its own loop")]
            )
        recorder = RoundRecorder(scenario, data, grid, MetricsLog(run_dir))
        strategy.start(
            grid=grid, initial_arrays=initial, num_rounds=scenario.rounds, evaluate_fn=recorder
        )
    else:
        checkpoint = _resume(scenario, run_dir, strategy, grid) if resume else None
        if checkpoint is None:
            log = MetricsLog(run_dir, keep_recent=every is not None)
        else:
            log = MetricsLog.resumed(
                run_dir,
                checkpoint.metrics_bytes,
                checkpoint.recent_records,
                checkpoint.server_round,
            )
        recorder = RoundRecorder(scenario, data, grid, log)
        if checkpoint is None:
            state = LoopState(initial)
            recorder(0, initial)
        else:
            state = checkpoint.loop
            recorder.final_arrays = state.arrays
            restore_rng(checkpoint.rng_state)  # last: building models above drew from torch
        run_rounds(
            strategy,
            grid,
            state,
            first_round=1 if checkpoint is None else checkpoint.server_round + 1,
            num_rounds=scenario.rounds,
            evaluate_fn=recorder,
            after_round=None
            if every is None
            else Checkpointer(scenario, run_dir, strategy, grid, log),
        )
    if recorder.final_arrays is not None:
        save_arrays(recorder.final_arrays, run_dir / "final_arrays.npz")
