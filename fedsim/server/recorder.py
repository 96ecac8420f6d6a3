"""The per-round record and the run's callbacks it goes to (central evaluation first)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import Grid

from fedsim import wire
from fedsim.array_codec import view
from fedsim.config.schema import Scenario
from fedsim.engine.protocols import (
    ObservedRounds,
    TimedGrid,
)
from fedsim.engine.telemetry import Telemetry
from fedsim.errors import DivergedError
from fedsim.failure_watch import FailureWatch
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
from fedsim.outputs.plots import PlotsCallback
from fedsim.server.checkpoint import rng_kept as rng_kept  # re-exported: older imports
from fedsim.server.evaluation import CentralEvaluation
from fedsim.server.loop import FED_EVAL_METRICS

_PREFIXES = {"train": TRAIN_PREFIX, FED_EVAL_METRICS: FED_EVAL_PREFIX}


def build_callbacks(
    scenario: Scenario,
    evaluation: CentralEvaluation,
    log: MetricsLog,
    checkpointer: Callback | None = None,
) -> CallbackList:
    """The run's callbacks, in the order they are called.

    Central evaluation (it completes the round's record), the metrics log, the
    checkpointer (it counts on the log's length and captures the RNG state before any
    later callback could draw from it), the trackers, the scenario's callbacks, those of
    the Python API (in-process only), then the plots (they draw the finished log).
    """
    callbacks: list[Callback] = [evaluation, log]
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


class RoundRecorder:
    """Flower's ``evaluate_fn``: each round's record, handed to the run's callbacks.

    The record starts with the round, its times and the engine's telemetry; the metrics
    the strategy returned for the round (``strategy_metrics``) join it, prefixed; the
    callbacks complete it in order (central evaluation first) and log it.
    """

    def __init__(
        self,
        scenario: Scenario,
        grid: Grid,
        callbacks: CallbackList,
        evaluation: CentralEvaluation,
        run: RunInfo,
    ) -> None:
        self.scenario, self.grid, self.run = scenario, grid, run
        self.callbacks, self.evaluation = callbacks, evaluation
        self.telemetry = grid.telemetry if isinstance(grid, ObservedRounds) else Telemetry()
        self.started = time.perf_counter()
        self.final_arrays: ArrayRecord | None = None
        self.pending: dict[str, Any] = {}
        engine = scenario.engine
        self.failures = FailureWatch(engine.max_failure_fraction, engine.max_failed_rounds)
        self.failures_seen = 0  # telemetry.failure_reasons already shown to the watch

    def strategy_metrics(self, server_round: int, kind: str, metrics: MetricRecord | None) -> None:
        """Keep what ``aggregate_train``/``aggregate_evaluate`` returned for the record."""
        for name, value in (metrics or {}).items():
            self.pending[f"{_PREFIXES[kind]}{name}"] = value

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Record the round (callbacks evaluate and log it); return its test scores.

        Raises
        ------
        DivergedError
            If the global model has non-finite values: nothing after that is meaningful.
        """
        check_finite(server_round, arrays)
        self.final_arrays = arrays
        record: dict[str, Any] = {
            "round": server_round,
            "virtual_time_s": (
                self.grid.virtual_time_s if isinstance(self.grid, TimedGrid) else None
            ),
            "wall_time_s": time.perf_counter() - self.started,
            "eval_loss": None,  # central evaluation's, on the rounds it evaluates
            "eval_accuracy": None,
        }
        record.update(self.telemetry.pop().as_record())
        # Prefixed, so a strategy's metric never replaces one of fedsim's fields.
        record.update(self.pending)
        self.pending = {}
        # Callbacks that say they draw nothing skip keeping the states (~0.1 ms a round).
        with rng_kept() if self.callbacks.draws_random else contextlib.nullcontext():
            self.callbacks.on_round_end(self.run, server_round, clean_record(record), arrays)
        # After the round is logged: a run that stops shows what it did until then.
        self.failures.after_round(
            server_round, int(record.get("participants") or 0), self._new_failures()
        )
        loss, acc = self.evaluation.last
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


def check_finite(server_round: int, arrays: ArrayRecord) -> None:
    """Raise :class:`DivergedError` naming the round if any array is not finite."""
    for name, array in arrays.items():
        value = view(array)  # no copy, no header parsed again (Array.numpy() does both)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise DivergedError(
                f"round {server_round}: the global model has non-finite values in '{name}' "
                "(diverged: lower client.lr, or check the data for NaN/Inf); the run stops"
            )


def save_arrays(arrays: ArrayRecord, path: Path) -> None:
    """Write a model's arrays as ``.npz`` (name -> ndarray)."""
    np.savez(path, **{k: v.numpy() for k, v in arrays.items()})  # type: ignore[arg-type]
