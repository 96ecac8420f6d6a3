"""Approximate gradient coding with non-private data sharing (AGC).

Seeded by Makkonen, Niemelä, Hollanti, Kas Hanna, "Approximate Gradient Coding for
Privacy-Flexible Federated Learning with Non-IID Data" (arXiv 2404.03524). The paper
publishes no code; the construction here is fedsim's own, with the standard
stochastic gradient-code weights:

* offline, a fraction ``c`` of each client's data is marked non-private and sent to
  ``d − 1`` random other clients (:mod:`fedsim.data.sharing`);
* each round client k replies ``e_k = Σ_{P_k} g/(1−p) + Σ_{S_k} g/(d(1−p))`` at the
  received model; every client replies independently with probability ``1 − p``, so
  ``E[Σ_{replies} e_k] = Σ_{x∈D} g(x)`` and ``Σ e_k / |D|`` is an unbiased estimate of
  the full gradient, on which the server takes an SGD (momentum) step.

Client contract
---------------
Train messages carry the model and ``agc-c``, ``agc-d``, ``agc-p`` in the config (they
select ``clients/coded.py``'s step). The reply's arrays are ``e_k`` as
``agc.grad.<parameter name>`` (no model); its ``num-examples`` is ``|P_k| + |S_k|/d``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim import wire
from fedsim.data.federated import FederatedData
from fedsim.data.sharing import make_plan
from fedsim.strategies import register_strategy

# (replies' num-examples sum, |D|, p) -> the factor that turns Σ e_k into a gradient.
Decoder = Callable[[float, int, float], float]
DECODERS: dict[str, Decoder] = {
    # Unbiased under independent Bernoulli(p) straggling: divide by |D|.
    "unbiased": lambda _responders, num_examples, _p: 1.0 / num_examples,
    # Baseline: the example-weighted mean over the responders (undo the 1/(1−p)).
    "ignore-stragglers": lambda responders, _num_examples, p: (1.0 - p) / responders,
}


@register_strategy("agc")
class ApproxGradientCoding(FedAvg):
    """Server side of AGC: drop Bernoulli stragglers, decode, take an SGD step.

    Parameters
    ----------
    c : float
        Share of each client's data marked non-private, in [0, 1]; 0 is reweight-only.
    d : int
        Clients holding each non-private example, owner included (1 ≤ d ≤ clients).
    p : float
        Straggle probability in [0, 1) that the encoding weights assume.
    decoder : {"unbiased", "ignore-stragglers"}
        ``unbiased``: ``Σ e_k / |D|``; ``ignore-stragglers``: the mean gradient over
        the examples the responders stand for (the baseline).
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
        c: float = 0.1,
        d: int = 2,
        p: float = 0.0,
        decoder: str = "unbiased",
        draw_stragglers: bool = True,
        server_lr: float = 0.5,
        server_momentum: float = 0.0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= c <= 1.0:
            raise ValueError(f"c must be in [0, 1], got {c}")
        if d < 1:
            raise ValueError(f"d must be >= 1, got {d}")
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p must be in [0, 1), got {p}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {sorted(DECODERS)}, got '{decoder}'")
        if server_lr <= 0 or not 0.0 <= server_momentum < 1.0:
            raise ValueError("server_lr must be > 0 and server_momentum in [0, 1)")
        super().__init__(**kwargs)
        self.c, self.d, self.p, self.decoder = c, d, p, decoder
        self.draw_stragglers = draw_stragglers
        self.server_lr, self.server_momentum = server_lr, server_momentum
        self.seed = int(np.random.randint(2**31)) if seed is None else seed
        self.num_examples: int | None = None  # |D|, set by the offline phase
        self.current: ArrayRecord | None = None
        self.velocity: dict[str, np.ndarray] = {}

    def offline_phase(self, data: FederatedData, seed: int) -> dict[str, int]:
        """Draw the run's sharing plan (as clients do) and return its transfer log."""
        plan = make_plan(data, self.c, self.d, seed)
        self.num_examples = plan.num_examples
        return plan.transfer_log()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send c, d, p; keep only the clients that do not straggle this round."""
        self.current = arrays
        config[wire.AGC_C], config[wire.AGC_D], config[wire.AGC_P] = self.c, self.d, self.p
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if not self.draw_stragglers or self.p == 0.0:
            return messages
        return [
            m
            for m in messages
            if np.random.default_rng([self.seed, server_round, m.metadata.dst_node_id]).random()
            >= self.p
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Sum the encoded gradients that arrived, decode, and step the global model."""
        prefix = wire.AGC_GRAD_PREFIX
        total: dict[str, np.ndarray] = {}
        represented, loss_sum, count = 0.0, 0.0, 0
        for msg in replies:
            if msg.has_error() or wire.ARRAYS not in msg.content.array_records:
                continue
            for key, value in msg.content.array_records[wire.ARRAYS].items():
                if key.startswith(prefix):
                    name = key[len(prefix) :]
                    g = value.numpy().astype(np.float64)
                    total[name] = total[name] + g if name in total else g
            metrics = msg.content.metric_records.get(wire.METRICS, MetricRecord())
            n = float(metrics.get(wire.NUM_EXAMPLES, 0.0))  # type: ignore[arg-type]
            represented += n
            loss_sum += n * float(metrics.get(wire.TRAIN_LOSS, 0.0))  # type: ignore[arg-type]
            count += 1
        if not total or self.current is None:
            return None, None
        if self.num_examples is None:
            raise RuntimeError("offline_phase must run before the first round")
        scale = DECODERS[self.decoder](represented, self.num_examples, self.p)
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
