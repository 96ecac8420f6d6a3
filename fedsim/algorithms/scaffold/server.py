"""``scaffold``: stochastic controlled averaging (Karimireddy et al. 2020).

The server keeps a control variate c (one array per model parameter, zero at first)
and sends it with the model x; client i corrects every local gradient by ``c - c_i``
and replies with its trained model ``y_i`` and the change ``Δc_i = c_i+ - c_i`` of its
own control variate (see :mod:`fedsim.algorithms.scaffold.client`). The server then takes

``x <- x + η_g (avg_i y_i - x)`` and ``c <- c + (1/N) Σ_{i∈S} Δc_i``,

with N the number of nodes. The average of the models is Flower's FedAvg's (weighted by
``num-examples``; the paper averages uniformly, which is the same for equal-sized
clients); with c and every ``c_i`` zero the client steps are plain SGD, so SCAFFOLD's
first round is FedAvg's.

Client contract: the train config carries ``local-step: scaffold`` and
``scaffold-option`` ("I" or "II"); the message's arrays carry the model and c as
``scaffold.c.<name>``; the reply carries the trained model and ``Δc_i`` under the same
keys. Clients keep ``c_i`` in ``context.state``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

import fedsim
from fedsim import wire
from fedsim.algorithms.scaffold import keys

OPTIONS = ("I", "II")


@fedsim.register_strategy("scaffold")
class Scaffold(FedAvg):
    """SCAFFOLD: FedAvg with server and client control variates.

    Parameters
    ----------
    option : {"I", "II"}
        How clients update ``c_i``: the gradient at the server model over their data
        (I, one more pass over the data), or from the local update (II, free).
    server_lr : float
        The global step size η_g > 0 (1: the average of the clients' models).
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    client_step: ClassVar[str] = "scaffold"  # the local step clients run (clients/)

    def __init__(self, *, option: str = "II", server_lr: float = 1.0, **kwargs: Any) -> None:
        if option not in OPTIONS:
            raise ValueError(f"option must be one of {list(OPTIONS)}, got {option!r}")
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        super().__init__(**kwargs)
        self.option, self.server_lr = option, float(server_lr)
        self.c: dict[str, np.ndarray] = {}  # "<name>" -> the server's control variate
        self.num_nodes = 0  # N: the nodes the grid knows
        self._sent = ArrayRecord()  # this round's x (for the server step size)

    @classmethod
    def check(cls, scenario: fedsim.Scenario, params: Mapping[str, Any]) -> list[fedsim.Problem]:
        """Option I under ``client.dp``: its gradient at x is not private."""
        if scenario.client.dp is not None and params.get("option") == "I":
            reason = (
                "option 'I' uploads the gradient of the client's data at the server "
                "model, which DP-SGD's clipping and noise do not cover; use option 'II'"
            )
            return [fedsim.Problem("strategy.params.option", reason)]
        return []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the model, c (zeros before any client replied) and the option."""
        self.num_nodes = len(list(grid.get_node_ids()))
        config[wire.LOCAL_STEP] = self.client_step
        config[keys.SCAFFOLD_OPTION] = self.option
        payload = ArrayRecord(dict(arrays.items()))
        for name, value in arrays.items():
            c = self.c.get(name)
            payload[keys.SCAFFOLD_C_PREFIX + name] = Array(
                np.zeros_like(value.numpy()) if c is None else c
            )
        self._sent = arrays
        return super().configure_train(server_round, payload, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the models (FedAvg), step by η_g, and add ``Σ Δc_i / N`` to c."""
        replies = list(replies)
        prefix = keys.SCAFFOLD_C_PREFIX
        delta: dict[str, np.ndarray] = {}
        for msg in replies:
            if msg.has_error() or wire.ARRAYS not in msg.content.array_records:
                continue
            record = msg.content.array_records[wire.ARRAYS]
            for key, value in record.items():
                if key.startswith(prefix):
                    name = key[len(prefix) :]
                    d = value.numpy().astype(np.float64)
                    delta[name] = delta[name] + d if name in delta else d
            # FedAvg below sees the model only.
            msg.content[wire.ARRAYS] = ArrayRecord(
                {k: v for k, v in record.items() if not k.startswith(prefix)}
            )
        averaged, metrics = super().aggregate_train(server_round, replies)
        if averaged is None:
            return None, metrics
        n = max(self.num_nodes, 1)
        for name, d in delta.items():
            old = self.c.get(name)
            base = np.zeros_like(d) if old is None else old.astype(np.float64)
            self.c[name] = (base + d / n).astype(averaged[name].numpy().dtype)
        if self.server_lr != 1.0:
            averaged = ArrayRecord(
                {
                    k: Array(_step(self._sent[k].numpy(), v.numpy(), self.server_lr))
                    for k, v in averaged.items()
                }
            )
        return averaged, metrics


def _step(x: np.ndarray, avg: np.ndarray, lr: float) -> np.ndarray:
    """``x + lr (avg - x)`` in ``x``'s dtype."""
    out: np.ndarray = (x + lr * (avg - x)).astype(x.dtype)
    return out
