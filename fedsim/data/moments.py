"""LDPC moment encoding's offline phase (``data.moment_encoding``).

For least squares on all training data, with ``X̃ = [X, 1]`` (the bias column last),
the gradient of ``‖X̃θ − y‖²/(2N)`` is ``(Mθ − b)/N`` with ``M = X̃ᵀX̃`` and
``b = X̃ᵀy``. The rows of ``[M | b]`` (p x (p + 1), ``p`` = features + 1) are cut into
``k`` blocks of ``r = ceil(p / k)`` rows (zero rows pad the last), and the blocks are
encoded over the ``n`` clients with the code ``data.moment_encoding`` names
(:mod:`fedsim.erasure_code`): client ``j`` holds ``B_j = Σ_i G[j, i] [M | b]_i``. At a
model θ it replies ``B_j [θ; −1] = A_j θ − c_j``: the code's symbol ``j`` of the
gradient's blocks (the code is linear), which the server decodes.

Every process computes the same plan from the scenario (the split and the code are
drawn from the run seed), as with AGC's sharing plan; a deployed device reads its block
from its ``fedsim deploy split`` file. The coded blocks mix every client's data
moments: the encoding is not private (``client.dp`` refuses it).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedsim.config.schema import DataConfig, MomentEncodingConfig
from fedsim.data.federated import federated_data
from fedsim.erasure_code import ErasureCode, ldpc, replication, uncoded
from fedsim.errors import Problem, ScenarioError

_lock = threading.Lock()


@dataclass(frozen=True)
class MomentPlan:
    """The code and every client's coded block of the second moment.

    Attributes
    ----------
    code : ErasureCode
        The code over the clients.
    blocks : ndarray
        Shape (n, r, p + 1): client ``j``'s ``[A_j | c_j]``.
    num_features : int
        ``p``: the model's parameters (features plus the bias).
    num_examples : int
        ``N``: the training examples the moments sum over.
    """

    code: ErasureCode
    blocks: NDArray[np.float64]
    num_features: int
    num_examples: int

    @property
    def rows(self) -> int:
        """``r``: rows of each block (the length of a client's reply)."""
        return int(self.blocks.shape[1])

    def transfer_log(self) -> dict[str, int | float]:
        """What the offline phase sends: one coded block to each client."""
        return {
            "offline_code_length": self.code.n,
            "offline_code_dimension": self.code.k,
            "offline_block_rows": self.rows,
            "offline_transfer_bytes": int(self.blocks.size * 8),
        }


def make_code(cfg: MomentEncodingConfig, n: int, seed: int) -> ErasureCode:
    """The code ``data.moment_encoding`` names over ``n`` clients.

    Raises
    ------
    ScenarioError
        If the code's parameters do not fit ``n`` clients (key ``data.moment_encoding``).
    """
    try:
        if cfg.code == "ldpc":
            return ldpc(n, cfg.column_weight, cfg.row_weight, seed)
        if cfg.code == "replication":
            return replication(n, cfg.replicas)
        return uncoded(n)
    except ValueError as exc:
        raise ScenarioError([Problem("data.moment_encoding", str(exc))]) from None


def second_moment(x: NDArray[Any], y: NDArray[Any]) -> NDArray[np.float64]:
    """``[X̃ᵀX̃ | X̃ᵀy]`` with ``X̃ = [X, 1]``, shape (p, p + 1)."""
    xt = np.hstack([x.reshape(len(x), -1).astype(np.float64), np.ones((len(x), 1))])
    return np.hstack([xt.T @ xt, (xt.T @ y.astype(np.float64))[:, None]])


def encode(moment: NDArray[np.float64], code: ErasureCode) -> NDArray[np.float64]:
    """Cut ``moment``'s rows into ``code.k`` blocks and encode them: (n, r, p + 1)."""
    p, width = moment.shape
    r = math.ceil(p / code.k)
    padded = np.zeros((code.k * r, width))
    padded[:p] = moment
    source = padded.reshape(code.k, r * width)
    return (code.generator @ source).reshape(code.n, r, width)


@lru_cache(maxsize=4)
def _plan(cfg: DataConfig, seed: int) -> MomentPlan:
    if cfg.moment_encoding is None:
        raise ScenarioError([Problem("data.moment_encoding", "is not set")])
    data = federated_data(cfg, seed)
    if data.y.dtype.kind != "f":
        raise ScenarioError(
            [
                Problem(
                    "data.moment_encoding",
                    "needs regression targets (data.dataset: regression, or npz with "
                    "targets: values)",
                )
            ]
        )
    code = make_code(cfg.moment_encoding, cfg.num_clients, seed)
    moment = second_moment(data.x, data.y)
    return MomentPlan(code, encode(moment, code), moment.shape[0], len(data.y))


def moment_plan(cfg: DataConfig, seed: int) -> MomentPlan:
    """Return the run's moment plan, computed once per process per (data, seed)."""
    with _lock:
        return _plan(cfg, seed)
