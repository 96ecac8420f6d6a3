"""The base of strategy wrappers: hold ``self.strategy`` and delegate every hook.

As Flower's DP wrappers do, a wrapper adds one concern (robust aggregation, link
compression) around any strategy and overrides only the hooks that concern touches.
Attributes the wrapper lacks are read from the wrapped strategy (``weighted_by_key``,
an ``offline_phase``), so wrapping changes nothing else the server looks up.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


class StrategyWrapper(Strategy):
    """Delegate every :class:`~flwr.serverapp.strategy.Strategy` hook to ``strategy``.

    Parameters
    ----------
    strategy : Strategy
        The wrapped strategy. It must run Flower's round loop (not override ``start``):
        a wrapper's hooks are only called by that loop.
    """

    def __init__(self, strategy: Strategy) -> None:
        if type(strategy).start is not Strategy.start:
            raise ValueError(
                f"{type(strategy).__name__} runs its own loop (overrides start) and cannot "
                "be wrapped"
            )
        self.strategy = strategy

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes the wrapper lacks; "strategy" itself is excluded so
        # an object being unpickled (no attributes yet) does not recurse.
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def summary(self) -> None:
        """Log the wrapped strategy's summary."""
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Configure the next round of training (the wrapped strategy's)."""
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the training replies (the wrapped strategy's)."""
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Configure the next round of federated evaluation (the wrapped strategy's)."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate the evaluation replies (the wrapped strategy's)."""
        return self.strategy.aggregate_evaluate(server_round, replies)
