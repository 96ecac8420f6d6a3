"""Approximate gradient coding with non-private data sharing (AGC).

Seeded by Makkonen, Niemelä, Hollanti, Kas Hanna, "Approximate Gradient Coding for
Privacy-Flexible Federated Learning with Non-IID Data" (arXiv 2404.03524). The paper
publishes no code; the construction here is fedsim's own, with the standard
stochastic gradient-code weights:

* offline, a fraction ``c`` of each client's data is marked non-private and sent to
  ``d − 1`` random other clients (``data.sharing``, :mod:`fedsim.data.sharing`): the
  nodes' data then holds those copies, with each example's holder count;
* each round client k replies ``e_k = Σ_{P_k} g/(1−p) + Σ_{S_k} g/(d(1−p))`` at the
  received model. A sampled client replies independently with probability ``1 − p``
  and each of the K available clients is sampled with probability m/K (m per round),
  so ``E[(K/m) Σ_{replies} e_k] = Σ_{x∈D} g(x)`` and ``(K/m) Σ e_k / |D|`` is an
  unbiased estimate of the full gradient, on which the server takes an SGD (momentum)
  step.

The unbiasedness needs each client's miss to be an independent draw with probability
``p``. When the virtual clock's deadline decides instead, a slow device misses every
round: ``decoder: per-client`` replaces ``1 − p`` by each client's on-time rate
estimated from the rounds before (unbiased in the limit for every client that is on
time with positive probability; no decoder can recover a client that never is).

Client contract
---------------
Train messages carry the model and ``agc-p`` in the config (it selects
``fedsim/algorithms/agc/client.py``'s step). The reply's arrays are ``e_k`` as
``agc.grad.<parameter name>`` (no model); its ``num-examples`` is ``|P_k| + |S_k|/d``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim import wire
from fedsim.algorithms.agc import AGCParams, keys
from fedsim.config.schema import DataConfig
from fedsim.data.sharing import sharing_plan
from fedsim.strategies import register_strategy


@register_strategy("agc")
class ApproxGradientCoding(FedAvg):
    """Server side of AGC: drop Bernoulli stragglers, decode, take an SGD step.

    The sharing plan (``c``, ``d``) is the data's: ``data.sharing``.

    Parameters
    ----------
    p : float
        Straggle probability in [0, 1) that the encoding weights assume.
    decoder : {"unbiased", "per-client", "ignore-stragglers"}
        ``unbiased``: ``(K/m) Σ e_k / |D|``; ``per-client``: the same with each reply
        reweighted by ``(1−p)/π_k`` (``1/π_k`` with ``draw_stragglers``), π_k its
        on-time rate (Laplace smoothed; for deadline-driven stragglers);
        ``ignore-stragglers``: the mean
        gradient over the examples the responders stand for (the baseline).
    draw_stragglers : bool
        Drop each sampled client with probability ``p`` before sending (exact
        Bernoulli straggling). False: only the engine's deadline makes stragglers, and
        ``p`` should match the rate at which it does.
    server_lr, server_momentum : float
        The server's SGD step on the decoded gradient.
    seed : int, optional
        Seed of the straggler draws; default: drawn from numpy's global generator,
        which fedsim's ServerApp seeds with the run seed.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (``fraction_train`` ...).
    """

    def __init__(
        self,
        *,
        p: float = 0.0,
        decoder: str = "unbiased",
        draw_stragglers: bool = True,
        server_lr: float = 0.5,
        server_momentum: float = 0.0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        AGCParams.checked(
            p=p,
            decoder=decoder,
            draw_stragglers=draw_stragglers,
            server_lr=server_lr,
            server_momentum=server_momentum,
            seed=seed,
        )
        super().__init__(**kwargs)
        self.p, self.decoder = p, decoder
        self.draw_stragglers = draw_stragglers
        self.server_lr, self.server_momentum = server_lr, server_momentum
        self.seed = int(np.random.randint(2**31)) if seed is None else seed
        self.num_examples: int | None = None  # |D|, set by the offline phase
        self.current: ArrayRecord | None = None
        self.velocity: dict[str, np.ndarray] = {}
        self.cohort = 1.0  # K/m of the round under way: 1 / each client's sampling chance
        self.asked: dict[str, int] = {}  # per node: rounds it was sent a message
        self.on_time: dict[str, int] = {}  # per node: rounds its reply was aggregated
        self.waiting: list[str] = []  # nodes sent a message this round

    def offline_phase(self, data: DataConfig, seed: int) -> dict[str, int]:
        """Draw the run's sharing plan (as the nodes' data does) and return its transfer log."""
        plan = sharing_plan(data, seed)
        self.num_examples = plan.num_examples
        return plan.transfer_log()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send p; keep only the clients that do not straggle this round."""
        self.current = arrays
        config[keys.AGC_P] = self.p
        messages = list(super().configure_train(server_round, arrays, config, grid))
        # FedAvg samples m of the K connected nodes uniformly without replacement.
        self.cohort = len(list(grid.get_node_ids())) / max(len(messages), 1)
        if self.draw_stragglers and self.p > 0.0:
            messages = [
                m
                for m in messages
                if np.random.default_rng([self.seed, server_round, m.metadata.dst_node_id]).random()
                >= self.p
            ]
        self.waiting = [str(m.metadata.dst_node_id) for m in messages]
        return messages

    def _reply_weight(self, node: str) -> float:
        """Per-client decoding: the code's ``1−p`` replaced by the client's own rate.

        π_k is the Laplace-smoothed share of the rounds before this one in which the
        client, once sent a message, replied in time. Without the strategy's own draw
        the code's ``1/(1−p)`` stood for that rate: the reply is reweighted by
        ``(1−p)/π_k``. With the draw (which already accounts for ``1−p``) by ``1/π_k``.
        """
        if self.decoder != "per-client":
            return 1.0
        rate = (self.on_time.get(node, 0) + 1.0) / (self.asked.get(node, 0) + 2.0)
        return (1.0 if self.draw_stragglers else 1.0 - self.p) / rate

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Sum the encoded gradients that arrived, decode, and step the global model."""
        prefix = keys.AGC_GRAD_PREFIX
        total: dict[str, np.ndarray] = {}
        represented, loss_sum, count = 0.0, 0.0, 0
        arrived: list[str] = []
        for msg in replies:
            if msg.has_error() or wire.ARRAYS not in msg.content.array_records:
                continue
            node = str(msg.metadata.src_node_id)
            weight = self._reply_weight(node)
            arrived.append(node)
            for key, value in msg.content.array_records[wire.ARRAYS].items():
                if key.startswith(prefix):
                    name = key[len(prefix) :]
                    g = weight * value.numpy().astype(np.float64)
                    total[name] = total[name] + g if name in total else g
            metrics = msg.content.metric_records.get(wire.METRICS, MetricRecord())
            n = float(metrics.get(wire.NUM_EXAMPLES, 0.0))  # type: ignore[arg-type]
            represented += n
            loss_sum += n * float(metrics.get(wire.TRAIN_LOSS, 0.0))  # type: ignore[arg-type]
            count += 1
        self._count_on_time(arrived)
        if not total or self.current is None:
            return None, None
        if self.num_examples is None:
            raise RuntimeError("offline_phase must run before the first round")
        if self.decoder == "ignore-stragglers":
            scale = (1.0 - self.p) / represented  # undo the 1/(1−p): responders' mean
        else:
            scale = self.cohort / self.num_examples
        updated: dict[str, Array] = {}
        for name, value in self.current.items():
            theta = value.numpy()
            if name not in total:  # buffers (no gradient) stay as they are
                updated[name] = value
                continue
            v = self.server_momentum * self.velocity.get(name, 0.0) + scale * total[name]
            self.velocity[name] = v
            updated[name] = Array((theta - self.server_lr * v).astype(theta.dtype))
        metrics_out = MetricRecord(
            {"responders": count, wire.TRAIN_LOSS: loss_sum / max(represented, 1e-12)}
        )
        return ArrayRecord(updated), metrics_out

    def _count_on_time(self, arrived: list[str]) -> None:
        """Update each node's on-time count after its reply (or its miss) this round."""
        for node in self.waiting:
            self.asked[node] = self.asked.get(node, 0) + 1
        for node in arrived:
            self.on_time[node] = self.on_time.get(node, 0) + 1
        self.waiting = []
