"""Central evaluation and the per-round record it hands to the run's callbacks."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import Grid

from fedsim import wire
from fedsim.config.schema import Scenario
from fedsim.data.federated import FederatedData
from fedsim.engine.protocols import (
    ObservedRounds,
    TimedGrid,
)
from fedsim.engine.telemetry import Telemetry
from fedsim.errors import DivergedError, Problem, ScenarioError
from fedsim.evaluation import (
    class_recall,
    evaluate_model,
    mean_squared_error,
    per_example_scores,
)
from fedsim.failure_watch import FailureWatch
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
)
from fedsim.outputs.own_models import ClientTests, HoldsOwnModels, score_own_models
from fedsim.outputs.per_client import (
    NO_CLIENT_TESTS,
    PER_CLIENT_FILE,
    append_rows,
    client_scores,
    summarize_clients,
)
from fedsim.outputs.plots import PlotsCallback
from fedsim.outputs.summary import NON_FINITE
from fedsim.server.checkpoint import (
    capture_rng,
    restore_rng,
)
from fedsim.server.loop import FED_EVAL_METRICS
from fedsim.training_device import first, resolve

_PREFIXES = {"train": TRAIN_PREFIX, FED_EVAL_METRICS: FED_EVAL_PREFIX}


def build_callbacks(
    scenario: Scenario, log: MetricsLog, checkpointer: Callback | None = None
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
        self.telemetry = grid.telemetry if isinstance(grid, ObservedRounds) else Telemetry()
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
        engine = scenario.engine
        self.failures = FailureWatch(engine.max_failure_fraction, engine.max_failed_rounds)
        self.failures_seen = 0  # telemetry.failure_reasons already shown to the watch

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
            "virtual_time_s": (
                self.grid.virtual_time_s if isinstance(self.grid, TimedGrid) else None
            ),
            "wall_time_s": time.perf_counter() - self.started,
            "eval_loss": loss,
            "eval_accuracy": acc,
        }
        if evaluate and not all(v is None or math.isfinite(v) for v in (loss, acc)):
            # The log writes NaN as null: this says the round was evaluated, to NaN.
            record["eval_status"] = NON_FINITE
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
        # After the round is logged: a run that stops shows what it did until then.
        self.failures.after_round(
            server_round, int(record.get("participants") or 0), self._new_failures()
        )
        if loss is None:
            return None
        if acc is None:
            return MetricRecord({wire.EVAL_LOSS: loss})
        return MetricRecord({wire.EVAL_LOSS: loss, wire.EVAL_ACCURACY: acc})

    def _new_failures(self) -> list[str]:
        """Return the round's failure reasons; the kept list keeps their first lines only."""
        kept = self.telemetry.failure_reasons
        new = kept[self.failures_seen :]
        kept[self.failures_seen :] = [r.split(wire.TRACEBACK_MARK, 1)[0] for r in new]
        self.failures_seen = len(kept)
        return new

    def _own_models(self, arrays: ArrayRecord) -> dict[str, Any]:
        """Generalisation per level and specialisation per client (:mod:`own_models`)."""
        assert self.owner is not None
        data = self.data
        if self.client_tests is None:
            self.client_tests = ClientTests.build(
                data.y, data.parts, data.y_test, data.test_parts, data.num_classes
            )
        batch = self.scenario.client.eval_batch_size
        return score_own_models(
            self.model, self.owner, arrays, data.x_test, data.y_test, self.client_tests, batch
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
