"""The synchronous round loop of Flower's ``Strategy.start``, startable at any round.

Flower's ``Strategy.start`` always runs rounds ``1..num_rounds``, so a run restored
from a checkpoint cannot re-enter it at round ``r + 1``. :func:`run_rounds` calls the
strategy's public hooks in exactly the order ``start`` does (``configure_train`` ->
``send_and_receive`` -> ``aggregate_train``, then ``configure_evaluate`` ->
``send_and_receive`` -> ``aggregate_evaluate``, then the central ``evaluate_fn``),
with one train and one evaluate ``ConfigRecord`` that live across rounds as in
``start``. Strategies that override ``start`` (asynchronous ones) keep their own loop;
:func:`uses_flower_loop` tells the two apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

# Flower's default per-round wall-clock limit for replies (Strategy.start's `timeout`).
DEFAULT_TIMEOUT_S = 3600.0

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]
AfterRound = Callable[[int, "LoopState"], None]
# ``(server_round, kind, metrics)``: what ``aggregate_train`` (kind "train") and
# ``aggregate_evaluate`` (kind "fed-eval") returned, so nothing the loop learns is dropped.
StrategyMetrics = Callable[[int, str, MetricRecord | None], None]
TRAIN_METRICS = "train"
FED_EVAL_METRICS = "fed-eval"


def uses_flower_loop_class(cls: type[Strategy]) -> bool:
    """Whether strategies of class ``cls`` run Flower's own ``start`` loop."""
    return cls.start is Strategy.start


def uses_flower_loop(strategy: Strategy) -> bool:
    """Whether ``strategy`` runs Flower's own ``start`` loop (and so can run in ours)."""
    return uses_flower_loop_class(type(strategy))


@dataclass
class LoopState:
    """Everything the loop carries from one round to the next.

    Attributes
    ----------
    arrays : ArrayRecord
        The current global model.
    train_config, evaluate_config : ConfigRecord
        The records ``start`` passes to every ``configure_*`` call; strategies may
        write into them and read it back in later rounds.
    """

    arrays: ArrayRecord
    train_config: ConfigRecord = field(default_factory=ConfigRecord)
    evaluate_config: ConfigRecord = field(default_factory=ConfigRecord)


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    state: LoopState,
    *,
    first_round: int,
    num_rounds: int,
    evaluate_fn: EvaluateFn,
    after_round: AfterRound | None = None,
    strategy_metrics: StrategyMetrics | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> LoopState:
    """Run rounds ``first_round..num_rounds`` as ``Strategy.start`` would.

    The initial central evaluation (round 0) is the caller's, as is restoring
    ``state`` when resuming. ``after_round(r, state)`` runs after round ``r``'s central
    evaluation (fedsim's checkpoints are a callback of that evaluation instead).
    ``strategy_metrics`` receives the metrics ``aggregate_train`` and
    ``aggregate_evaluate`` return, before the central evaluation.
    """
    for server_round in range(first_round, num_rounds + 1):
        train_replies = grid.send_and_receive(
            messages=strategy.configure_train(server_round, state.arrays, state.train_config, grid),
            timeout=timeout,
        )
        arrays, train_metrics = strategy.aggregate_train(server_round, train_replies)
        if strategy_metrics is not None:
            strategy_metrics(server_round, TRAIN_METRICS, train_metrics)
        if arrays is not None:
            state.arrays = arrays
        evaluate_replies = grid.send_and_receive(
            messages=strategy.configure_evaluate(
                server_round, state.arrays, state.evaluate_config, grid
            ),
            timeout=timeout,
        )
        evaluate_metrics = strategy.aggregate_evaluate(server_round, evaluate_replies)
        if strategy_metrics is not None:
            strategy_metrics(server_round, FED_EVAL_METRICS, evaluate_metrics)
        evaluate_fn(server_round, state.arrays)
        if after_round is not None:
            after_round(server_round, state)
    return state
