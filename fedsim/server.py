"""fedsim's ServerApp: ``fedsim.server:app``.

Reads the scenario from ``run_config["scenario"]`` (a run submitted to a SuperLink
first passes the operator's :class:`~fedsim.submission_policy.SubmissionPolicy`),
builds the strategy by registry name and runs Flower's round loop (:mod:`fedsim.rounds`:
the hooks of ``Strategy.start`` in its order, resumable from a checkpoint; strategies
that override ``start`` run their own), with a central evaluation on the held-out test
set that also writes one ``metrics.jsonl`` record per round (the engine's telemetry supplies
participants, stragglers, bytes and time).
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from pydantic import ValidationError

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
from fedsim.data.label_noise import flipped_per_client
from fedsim.engine.observed_grid import ObservedGrid
from fedsim.engine.telemetry import Telemetry
from fedsim.errors import DivergedError, Problem, ScenarioError, UnknownNameError
from fedsim.evaluation import (
    class_recall,
    evaluate_model,
    mean_squared_error,
    per_example_scores,
)
from fedsim.label_prior import log_prior
from fedsim.models import build_model
from fedsim.outputs.callbacks import (
    Callback,
    CallbackList,
    RunInfo,
    attached_callbacks,
    build_callback,
    build_trackers,
)
from fedsim.outputs.metrics_log import (
    FED_EVAL_PREFIX,
    TRAIN_PREFIX,
    MetricsLog,
    clean_record,
    read_metrics,
)
from fedsim.outputs.own_models import ClientTests, HoldsOwnModels, score_own_models
from fedsim.outputs.per_client import (
    NO_CLIENT_TESTS,
    PER_CLIENT_FILE,
    append_rows,
    client_scores,
    keep_rounds,
    summarize_clients,
)
from fedsim.outputs.plots import PlotsCallback
from fedsim.resume_rules import check_resume
from fedsim.rounds import FED_EVAL_METRICS, LoopState, run_rounds, uses_flower_loop
from fedsim.run_config import scenario_from_run_config
from fedsim.scenario import DeviceTraceConfig, Scenario, StrategyConfig
from fedsim.scenario_loading import accepted_params
from fedsim.strategies import STRATEGIES
from fedsim.strategies.compression import CompressedLinks
from fedsim.submission_policy import SubmissionPolicy
from fedsim.training_device import first, resolve

app = ServerApp()
SHARING_FILE = "sharing.json"  # the offline phase's transfer log, if the strategy has one
LABEL_NOISE_FILE = "label_noise.json"  # per client: labels flipped by data.label_noise
WAIT_NOTICE_S = 5.0  # a wait on nodes longer than this says so (then every 30 s)
logger = logging.getLogger(__name__)


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
    """Instantiate the scenario's strategy with its params (plus fedsim's defaults).

    A ``strategy`` param given as ``{name, params}`` (a wrapper's inner strategy, as in
    ``median-of-means``) is built the same way first. A ``compression`` section that
    codes either direction wraps the result in
    :class:`~fedsim.strategies.compression.CompressedLinks`.
    """
    # With a device trace the population is never all online: a round waits for
    # `min_online` of them instead of everyone.
    trace = scenario.system.trace
    population = scenario.data.num_clients if trace is None else trace.min_online
    strategy = _build(scenario.strategy, population, "strategy", trace)
    if scenario.compression.active:
        try:
            strategy = CompressedLinks(
                strategy, downlink=scenario.compression.downlink, seed=scenario.seed
            )
        except ValueError as exc:
            raise ScenarioError([Problem("compression", str(exc))]) from None
    return strategy


def _build(
    config: StrategyConfig, population: int, key: str, trace: DeviceTraceConfig | None
) -> Strategy:
    try:
        cls = STRATEGIES.get(config.name)
    except UnknownNameError as exc:
        raise ScenarioError([exc.problem(f"{key}.name", "strategy")]) from None
    # Follows **kwargs into the Flower base class, so subclasses get the defaults too.
    accepted = accepted_params(cls) or []
    params = {k: v for k, v in strategy_defaults(population).items() if k in accepted}
    params.update(config.params)
    if "strategy" in accepted and "strategy" not in params:
        params["strategy"] = {"name": "fedavg"}  # a wrapper's default, with fedsim's defaults
    inner = params.get("strategy")
    if isinstance(inner, Mapping):
        try:
            inner_config = StrategyConfig.model_validate(dict(inner))
        except ValidationError as exc:
            raise ScenarioError([Problem(f"{key}.params.strategy", str(exc))]) from None
        params["strategy"] = _build(inner_config, population, f"{key}.params.strategy", trace)
    try:
        strategy = cls(**params)
    except (TypeError, ValueError) as exc:
        raise ScenarioError([Problem(_param_key(key, config.params, str(exc)), str(exc))]) from None
    if not isinstance(strategy, Strategy):
        raise ScenarioError([Problem(f"{key}.name", f"{cls!r} is not a flwr Strategy")])
    if trace is not None:
        _check_min_online(strategy, trace.min_online)
    return strategy


def _param_key(key: str, given: Mapping[str, Any], message: str) -> str:
    """``strategy.params.<name>`` when the strategy's message starts with a given name."""
    named = next((n for n in given if re.match(rf"{re.escape(n)}\b", message)), None)
    return f"{key}.params" if named is None else f"{key}.params.{named}"


def _check_min_online(strategy: Strategy, min_online: int) -> None:
    """Refuse minimum node counts above ``system.trace.min_online``.

    Flower waits (in wall-clock time) for its minimum node counts; a trace's grid
    guarantees ``min_online`` nodes, so a strategy that waits for more never starts.
    """
    waits = {
        name: getattr(strategy, name)
        for name in ("min_available_nodes", "min_train_nodes", "min_evaluate_nodes")
        if isinstance(getattr(strategy, name, None), int)
    }
    if not getattr(strategy, "fraction_evaluate", 1.0):
        waits.pop("min_evaluate_nodes", None)  # no federated evaluation: never waited for
    over = {k: v for k, v in waits.items() if v > min_online}
    if over:
        listed = ", ".join(f"strategy.params.{k}={v}" for k, v in over.items())
        raise ScenarioError(
            [Problem("system.trace.min_online", f"must be at least {listed} (got {min_online})")]
        )


_PREFIXES = {"train": TRAIN_PREFIX, FED_EVAL_METRICS: FED_EVAL_PREFIX}


def build_callbacks(
    scenario: Scenario, log: MetricsLog, checkpointer: Checkpointer | None = None
) -> CallbackList:
    """The run's callbacks, in the order they are called.

    The metrics log, the checkpointer (it counts on the log's length and captures the
    RNG state before any later callback could draw from it), the trackers, the
    scenario's callbacks, those of the Python API (in-process only), then the plots
    (they draw the finished log).
    """
    callbacks: list[Callback] = [log]
    if checkpointer is not None:
        callbacks.append(checkpointer)
    callbacks += build_trackers(scenario.output.trackers)
    for i, entry in enumerate(scenario.output.callbacks):
        spec = entry if isinstance(entry, str) else entry.model_dump()
        callbacks.append(build_callback(spec, f"output.callbacks.{i}"))
    callbacks += attached_callbacks()
    if scenario.output.plots:
        callbacks.append(PlotsCallback())
    return CallbackList(callbacks)


@contextmanager
def rng_kept() -> Iterator[None]:
    """Put the global RNG states back after the block: callbacks never change a run.

    A tracker or user callback that draws from ``random``/numpy/torch would otherwise
    shift Flower's client sampling and the clients' shuffles in later rounds.
    """
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


class RoundRecorder:
    """Central evaluation (``evaluate_fn``) that also hands each round's record on.

    The record goes to the run's callbacks (the metrics log first); the metrics the
    strategy returned for the round (``strategy_metrics``) join it, prefixed.
    """

    def __init__(
        self,
        scenario: Scenario,
        data: FederatedData,
        grid: Grid,
        callbacks: CallbackList,
        run: RunInfo,
        owner: HoldsOwnModels | None = None,
    ) -> None:
        self.scenario = scenario
        self.owner = owner  # a strategy whose own models are scored too
        self.client_tests: ClientTests | None = None
        self.data = data
        self.grid = grid
        self.callbacks = callbacks
        self.run = run
        self.log_path = run.run_dir / "metrics.jsonl"
        self.telemetry: Telemetry = getattr(grid, "telemetry", None) or Telemetry()
        self.model = build_model(
            scenario.model.name, scenario.model.params, data.input_shape, data.num_classes
        ).to(resolve(first(scenario.engine.device)))  # central evaluation there too
        self.started = time.perf_counter()
        self.final_arrays: ArrayRecord | None = None
        tau = scenario.output.eval_logit_adjust
        # Post-hoc logit adjustment: predict argmax f(x) - tau * log(global prior).
        self.logit_shift = (
            None if tau is None else -tau * log_prior(data.global_label_counts, data.num_classes)
        )
        self.pending: dict[str, Any] = {}

    def strategy_metrics(self, server_round: int, kind: str, metrics: MetricRecord | None) -> None:
        """Keep what ``aggregate_train``/``aggregate_evaluate`` returned for the record."""
        for name, value in (metrics or {}).items():
            self.pending[f"{_PREFIXES[kind]}{name}"] = value

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Evaluate on the test set (every ``output.evaluate_every`` rounds) and log.

        Raises
        ------
        DivergedError
            If the global model has non-finite values: nothing after that is meaningful.
        """
        check_finite(server_round, arrays)
        every = self.scenario.output.evaluate_every
        evaluate = server_round % every == 0 or server_round == self.scenario.rounds
        loss = acc = None
        batch = self.scenario.client.eval_batch_size
        regression = self.data.y_test.dtype.kind == "f"
        if evaluate:
            self.model.load_state_dict(arrays.to_torch_state_dict())
            if regression:  # least squares: the test MSE, and no accuracy
                loss = mean_squared_error(self.model, self.data.x_test, self.data.y_test, batch)
            else:
                loss, acc = evaluate_model(
                    self.model,
                    self.data.x_test,
                    self.data.y_test,
                    batch,
                    logit_shift=self.logit_shift,
                )
        self.final_arrays = arrays
        record: dict[str, Any] = {
            "round": server_round,
            "virtual_time_s": getattr(self.grid, "virtual_time_s", None),
            "wall_time_s": time.perf_counter() - self.started,
            "eval_loss": loss,
            "eval_accuracy": acc,
        }
        if evaluate and self.scenario.output.class_recall and not regression:
            recall = class_recall(
                self.model,
                self.data.x_test,
                self.data.y_test,
                self.data.num_classes,
                batch,
                logit_shift=self.logit_shift,
            )
            record["eval_recall"] = recall
            record["eval_recall_min"] = min((r for r in recall if r is not None), default=None)
        if evaluate and self.scenario.output.per_client_eval:
            record.update(self._per_client(server_round))
        if evaluate and self.owner is not None:
            record.update(self._own_models(arrays))
        record.update(self.telemetry.pop().as_record())
        diagnostics = getattr(self.model, "diagnostics", None)
        if evaluate and callable(diagnostics):
            # Model-specific numbers (e.g. how spread out class embeddings are).
            record["diagnostics"] = diagnostics()
        # Prefixed, so a strategy's metric never replaces one of fedsim's fields.
        record.update(self.pending)
        self.pending = {}
        with rng_kept():
            self.callbacks.on_round_end(self.run, server_round, clean_record(record), arrays)
        if loss is None:
            return None
        if acc is None:
            return MetricRecord({wire.EVAL_LOSS: loss})
        return MetricRecord({wire.EVAL_LOSS: loss, wire.EVAL_ACCURACY: acc})

    def _own_models(self, arrays: ArrayRecord) -> dict[str, Any]:
        """Generalisation per level and specialisation per client (:mod:`own_models`)."""
        assert self.owner is not None
        data = self.data
        if self.client_tests is None:
            self.client_tests = ClientTests.build(
                data.y, data.parts, data.y_test, data.test_parts, data.num_classes
            )
        tests = self.client_tests
        batch = self.scenario.client.eval_batch_size
        return score_own_models(
            self.model, self.owner, arrays, data.x_test, data.y_test, tests, batch
        )

    def _per_client(self, server_round: int) -> dict[str, Any]:
        """Score the loaded model on every client's own test split; log the rows."""
        parts = self.data.test_parts
        if parts is None:
            raise ScenarioError(
                [Problem("output.per_client_eval", "needs per-client test data " + NO_CLIENT_TESTS)]
            )
        losses, correct = per_example_scores(
            self.model, self.data.x_test, self.data.y_test, self.scenario.client.eval_batch_size
        )
        scores = client_scores(losses, correct, parts)
        append_rows(self.log_path.parent / PER_CLIENT_FILE, server_round, scores)
        return summarize_clients(scores)


def check_finite(server_round: int, arrays: ArrayRecord) -> None:
    """Raise :class:`DivergedError` naming the round if any array is not finite."""
    for name, array in arrays.items():
        value = array.numpy()
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise DivergedError(
                f"round {server_round}: the global model has non-finite values in '{name}' "
                "(diverged: lower client.lr, or check the data for NaN/Inf); the run stops"
            )


def save_arrays(arrays: ArrayRecord, path: Path) -> None:
    """Write a model's arrays as ``.npz`` (name -> ndarray)."""
    np.savez(path, **{k: v.numpy() for k, v in arrays.items()})  # type: ignore[arg-type]


class Checkpointer(Callback):
    """A checkpoint every ``output.checkpoint_every`` rounds (a callback after the log).

    It holds the loop's :class:`LoopState`, which the round loop updates in place, so
    at a round's end it saves what ``Strategy.start`` would carry into the next round.
    """

    def __init__(
        self,
        scenario: Scenario,
        run_dir: Path,
        strategy: Strategy,
        grid: Grid,
        log: MetricsLog,
        state: LoopState,
    ) -> None:
        if not isinstance(grid, ResumableGrid):
            raise ScenarioError(
                [Problem("output.checkpoint_every", "this engine cannot checkpoint its nodes")]
            )
        self.every = scenario.output.checkpoint_every or 1
        self.scenario = scenario.model_dump(mode="json")
        self.run_dir, self.strategy, self.grid, self.log = run_dir, strategy, grid, log
        self.state = state

    def on_round_end(
        self, run: RunInfo, server_round: int, record: dict[str, Any], arrays: ArrayRecord
    ) -> None:
        """Save the run's state if ``server_round`` (> 0) is a multiple of ``every``."""
        if server_round == 0 or server_round % self.every:
            return
        self.log.sync()  # the log the checkpoint counts on is on disk before it is
        save_checkpoint(
            self.run_dir,
            Checkpoint(
                server_round=server_round,
                loop=self.state,
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
    flower_grid = not isinstance(getattr(grid, "telemetry", None), Telemetry)
    if flower_grid:
        # Flower's own grid: the run came through a SuperLink (deployment, or the ray
        # engine's private one), so its config is the submitter's. Check it before the
        # scenario is loaded, which imports what it names.
        SubmissionPolicy.from_environ().check(context.run_config)
    scenario = scenario_from_run_config(context.run_config)
    run_dir = Path(str(context.run_config.get(wire.RUN_DIR) or "."))
    if flower_grid:  # count and check what passes
        grid = ObservedGrid(grid, scenario.engine.client_timeout_s)
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
    check_replies = getattr(grid, "check_replies", None)
    if callable(check_replies):  # every reply checked against the model before aggregation
        check_replies(initial, [len(part) for part in data.parts])
    strategy = build_strategy(scenario)
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
    if not uses_flower_loop(strategy):
        # Asynchronous strategies own their loop; they run as written, without checkpoints.
        if every is not None or resume:
            raise ScenarioError(
                [Problem("output.checkpoint_every", "this strategy runs its own loop")]
            )
        callbacks = build_callbacks(scenario, MetricsLog(run_dir))
        recorder = RoundRecorder(scenario, data, grid, callbacks, run)
        with rng_kept():
            callbacks.on_run_start(run)
        strategy.start(
            grid=grid, initial_arrays=initial, num_rounds=scenario.rounds, evaluate_fn=recorder
        )
    else:
        checkpoint = _resume(scenario, run_dir, strategy, grid) if resume else None
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
        owner = strategy if isinstance(strategy, HoldsOwnModels) else None
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
