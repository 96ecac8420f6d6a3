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

Client contract: the train config carries ``local-step: scaffold``,
``scaffold-option`` ("I" or "II") and, per node, ``scaffold-confirmed-round``: the
latest round whose ``Δc_i`` from that node the server added to c (0: none); the
message's arrays carry the model and c as ``scaffold.c.<name>``; the reply carries the
trained model and ``Δc_i`` under the same keys. Clients keep ``c_i`` in
``context.state``.

Commit on confirmation: a client's ``c_i+`` takes effect only once the server has
added its ``Δc_i`` to c. A reply that misses the round's deadline, drops or fails
never reaches c, so the client must roll back to its old ``c_i``, or c would stop being
the mean of the ``c_i`` (with 20% deadline stragglers the gap reached 86-111% of ‖c‖ by
round 20). The client keeps ``c_i+`` pending, tagged with its round, and commits it when
the next message it receives confirms that round (FedCurv's members serve the same
purpose). So ``c = (1/N) Σ_i c_i`` holds after every round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

import fedsim
from fedsim import wire
from fedsim.algorithms.scaffold import ScaffoldParams, keys


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

    def __init__(self, *, option: str = "II", server_lr: float = 1.0, **kwargs: Any) -> None:
        ScaffoldParams.checked(option=option, server_lr=server_lr)
        super().__init__(**kwargs)
        self.option, self.server_lr = option, float(server_lr)
        # "<name>" -> the server's control variate, in float64 (sent in the model's dtype)
        self.c: dict[str, np.ndarray] = {}
        # str(node id) -> the latest round whose Δc_i from that node is in c
        self.confirmed: dict[str, int] = {}
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
        config[wire.LOCAL_STEP] = keys.STEP
        config[keys.SCAFFOLD_OPTION] = self.option
        payload = ArrayRecord(dict(arrays.items()))
        for name, value in arrays.items():
            c = self.c.get(name)
            x = value.numpy()
            payload[keys.SCAFFOLD_C_PREFIX + name] = Array(
                np.zeros_like(x) if c is None else c.astype(x.dtype)
            )
        self._sent = arrays
        messages = super().configure_train(server_round, payload, config, grid)
        return [self._with_confirmation(msg) for msg in messages]

    def _with_confirmation(self, msg: Message) -> Message:
        """``msg`` with its own config: the node's confirmed round added (FedAvg shares one)."""
        node = msg.metadata.dst_node_id
        content = RecordDict(dict(msg.content.items()))
        config = ConfigRecord(dict(msg.content.config_records[self.configrecord_key]))
        config[keys.SCAFFOLD_CONFIRMED] = self.confirmed.get(str(node), 0)
        content[self.configrecord_key] = config
        return Message(content=content, dst_node_id=node, message_type=msg.metadata.message_type)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the models (FedAvg), step by η_g, and add ``Σ Δc_i / N`` to c."""
        replies = list(replies)
        prefix = keys.SCAFFOLD_C_PREFIX
        delta: dict[str, np.ndarray] = {}
        members: list[str] = []
        for msg in replies:
            if msg.has_error() or wire.ARRAYS not in msg.content.array_records:
                continue
            record = msg.content.array_records[wire.ARRAYS]
            model = ArrayRecord({k: v for k, v in record.items() if not k.startswith(prefix)})
            msg.content[wire.ARRAYS] = model  # FedAvg below sees the model only
            # A Δc_i counts whole or not at all: the client commits all of c_i+ or none.
            if not all(prefix + name in record for name in model):
                continue
            members.append(str(msg.metadata.src_node_id))
            for name in model:
                d = record[prefix + name].numpy().astype(np.float64)
                delta[name] = delta[name] + d if name in delta else d
        averaged, metrics = super().aggregate_train(server_round, replies)
        if averaged is None:
            return None, metrics  # c unchanged, so nobody's c_i+ is confirmed
        n = max(self.num_nodes, 1)
        for name, d in delta.items():
            self.c[name] = self.c.get(name, np.zeros_like(d)) + d / n
        for node in members:
            self.confirmed[node] = server_round
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
