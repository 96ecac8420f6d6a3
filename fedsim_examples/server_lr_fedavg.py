"""A user strategy: FedAvg with a server learning rate.

Used by ``docs/write-a-strategy.md``; ``tests/strategies/test_user_strategy.py`` runs it.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

import fedsim


@fedsim.register_strategy("server-lr-fedavg")
class ServerLrFedAvg(FedAvg):
    """FedAvg whose global step is ``eta`` times the averaged client update.

    ``eta=1`` is FedAvg. Client contract: unchanged from FedAvg (clients receive
    ``arrays`` and ``config``; they reply with ``arrays`` and ``metrics`` holding
    ``num-examples``).

    Parameters
    ----------
    eta : float
        Server learning rate, > 0.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(self, *, eta: float = 1.0, **kwargs: object) -> None:
        if eta <= 0:
            raise ValueError(f"eta must be > 0, got {eta}")
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.eta = eta
        self._current: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model the clients start from."""
        self._current = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Move from the current model by ``eta`` times the averaged update."""
        averaged, metrics = super().aggregate_train(server_round, replies)
        if averaged is None or self._current is None:
            return averaged, metrics
        old = self._current.to_numpy_ndarrays()
        new = averaged.to_numpy_ndarrays()
        # (1 - eta) * old + eta * new: exactly the FedAvg average when eta == 1.
        stepped = [(1 - self.eta) * o + self.eta * n for o, n in zip(old, new, strict=True)]
        record = ArrayRecord({k: Array(v) for k, v in zip(averaged.keys(), stepped, strict=True)})
        return record, metrics
