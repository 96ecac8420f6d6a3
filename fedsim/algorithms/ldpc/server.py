"""Gradient descent on moment-encoded least squares, decoded by peeling (LDPC).

Seeded by Maity, Rawat and Mazumdar, "Robust gradient descent via moment encoding and
LDPC codes" (ISIT 2019). For a linear model ``θ`` (``model: linear``) and squared loss,
the full gradient is ``(Mθ − b)/N`` with ``[M | b]`` the second moment of all training
data; the offline phase (``data.moment_encoding``, :mod:`fedsim.data.moments`) encodes
its row blocks over the clients with a code, and each round:

* every sampled client replies its coded symbol ``A_j θ − c_j`` (a straggler's never
  arrives: the engine's deadline drops it);
* the server runs the peeling decoder (:func:`fedsim.erasure_code.peel`; iterations until
  no check can fix an erasure, or ``max_iterations``), so the iterations adapt to the
  number of stragglers;
* blocks still missing are treated as dropped (zero), the paper's SGD view: the step
  is a block-coordinate step on what was recovered, ``θ ← θ − lr · ĝ / N``.

The codes ``uncoded`` (ignore stragglers: their blocks are dropped) and ``replication``
share this strategy and decoder, so one scenario compares them at equal simulated time.
What is our reconstruction (the paper's text was not available): the real-valued
weights of the parity checks, the systematic encoding, and the step size rule (a fixed
``lr``, no rescaling of the recovered blocks). ``gradient_scale`` multiplies the decoded
gradient by a constant: ``1/(1 − p)`` makes the uncoded gradient unbiased when each
client straggles with probability ``p`` (the baseline LDPC must beat at its own lr).

Client contract
---------------
Train messages carry the model plus a zero ``moment.product`` array of the block's
length, and ``local-step: moment-product`` in the config (``fedsim/algorithms/ldpc/client.py``). The
reply's arrays are ``moment.product`` filled with ``A_j θ − c_j`` (float64, no model);
its metrics carry ``moment-block`` (the client's partition id: the code position).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim import wire
from fedsim.algorithms.ldpc import LDPCParams, keys
from fedsim.config.schema import DataConfig, Scenario
from fedsim.data.moments import make_code, moment_plan
from fedsim.erasure_code import ErasureCode, peel
from fedsim.errors import Problem, ScenarioError
from fedsim.strategies import register_strategy


@register_strategy("ldpc")
class MomentEncodedGD(FedAvg):
    """Server side of moment encoding: decode the coded products, step θ.

    The code is the data's: ``data.moment_encoding``.

    Parameters
    ----------
    lr : float
        Step size on the decoded gradient ``ĝ / N`` (``2 / λ_max(M / N)`` diverges).
    max_iterations : int
        Cap on the peeling decoder's passes.
    gradient_scale : float
        Constant the decoded gradient is multiplied by before the step (default 1: no
        rescaling; ``1/(1 − p)`` for the unbiased uncoded baseline under straggle
        probability ``p``).
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (``fraction_train`` ...).
    """

    def __init__(
        self,
        *,
        lr: float = 0.5,
        max_iterations: int = 100,
        gradient_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        LDPCParams.checked(lr=lr, max_iterations=max_iterations, gradient_scale=gradient_scale)
        super().__init__(**kwargs)
        self.lr, self.max_iterations = lr, max_iterations
        self.gradient_scale = gradient_scale
        # Set by the offline phase; plain arrays and numbers, so checkpoints keep them.
        self.generator: np.ndarray | None = None  # the code's G, checks H and positions
        self.checks: np.ndarray | None = None
        self.info: np.ndarray | None = None
        self.rows = 0  # r: the length of a client's reply
        self.num_features = 0  # p: the model's parameters
        self.num_examples = 0  # N
        self.current: ArrayRecord | None = None

    @classmethod
    def check(cls, scenario: Scenario, params: Mapping[str, Any]) -> list[Problem]:
        """The strategy needs a moment encoding that fits the clients and a linear model."""
        problems = []
        encoding = scenario.data.moment_encoding
        if encoding is None:
            problems.append(
                Problem("data.moment_encoding", "strategy ldpc needs it (the coded moments)")
            )
        else:  # the code alone (no data): parameters that do not fit the clients
            try:
                make_code(encoding, scenario.data.num_clients, scenario.seed)
            except ScenarioError as exc:
                problems += exc.problems
        if scenario.model.name != "linear" and ":" not in scenario.model.name:
            problems.append(Problem("model.name", "strategy ldpc needs model 'linear'"))
        return problems

    def offline_phase(self, data: DataConfig, seed: int) -> dict[str, int | float]:
        """Encode the moments (as the nodes' data does) and return the transfer log."""
        plan = moment_plan(data, seed)
        code = plan.code
        self.generator, self.checks, self.info = code.generator, code.checks, code.info
        self.rows, self.num_features = plan.rows, plan.num_features
        self.num_examples = plan.num_examples
        return plan.transfer_log()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the model, a zero product array to fill and the step's name."""
        if self.generator is None:
            raise RuntimeError("offline_phase must run before the first round")
        self.current = arrays
        config[wire.LOCAL_STEP] = keys.STEP
        sent = ArrayRecord(dict(arrays.items()))
        sent[keys.MOMENT_PRODUCT] = Array(np.zeros(self.rows))
        return super().configure_train(server_round, sent, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Peel the arrived symbols, drop what stays missing, and step the model."""
        current = self.current
        if self.generator is None or self.checks is None or self.info is None or current is None:
            return None, None
        code = ErasureCode(self.generator, self.checks, self.info)
        symbols = np.zeros((code.n, self.rows))
        received = np.zeros(code.n, dtype=bool)
        for msg in replies:
            if msg.has_error() or wire.ARRAYS not in msg.content.array_records:
                continue
            metrics = msg.content.metric_records.get(wire.METRICS, MetricRecord())
            block = metrics.get(keys.MOMENT_BLOCK)
            product = msg.content.array_records[wire.ARRAYS].get(keys.MOMENT_PRODUCT)
            if not isinstance(block, int | float) or product is None:
                continue
            j = int(block)
            if not 0 <= j < code.n or received[j] or j != block:
                continue  # not a code position, or one already filled this round
            symbols[j] = product.numpy().astype(np.float64)
            received[j] = True
        if not received.any():
            return None, None
        decoded = peel(code, symbols, received, self.max_iterations)
        decoded_sum = decoded.source.reshape(-1)[: self.num_features]
        gradient = self.gradient_scale * decoded_sum / self.num_examples
        updated = step_linear(current, gradient, self.lr)
        out = MetricRecord(
            {
                "responders": int(received.sum()),
                "missing_blocks": len(decoded.missing),
                "peeling_iterations": decoded.iterations,
            }
        )
        return updated, out


def step_linear(arrays: ArrayRecord, gradient: np.ndarray, lr: float) -> ArrayRecord:
    """``θ − lr · g`` for θ the model's arrays flattened in order (weight, then bias)."""
    theta = np.concatenate([a.numpy().astype(np.float64).ravel() for a in arrays.values()])
    if theta.shape != gradient.shape:
        raise ValueError(f"the model has {theta.size} parameters, the moments {gradient.size}")
    new = theta - lr * gradient
    out: dict[str, Array] = {}
    start = 0
    for name, value in arrays.items():
        old = value.numpy()
        out[name] = Array(new[start : start + old.size].reshape(old.shape).astype(old.dtype))
        start += old.size
    return ArrayRecord(out)
