"""Approximate gradient coding with non-private data sharing (AGC).

The spec; the strategy is in ``server.py``, the client half in ``client.py``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedsim.algorithms import add_algorithm
from fedsim.algorithms.agc import keys
from fedsim.algorithms.params import FedAvgParams
from fedsim.algorithms.spec import AlgorithmSpec


class AGCParams(FedAvgParams):
    """AGC's ``strategy.params`` (and Flower's FedAvg ones); c and d are ``data.sharing``'s."""

    p: float = Field(0.0, ge=0, lt=1)
    """Straggle probability: drawn by the strategy and assumed by the weights."""
    decoder: Literal["unbiased", "per-client", "ignore-stragglers"] = "unbiased"
    """``unbiased`` ((K/m) Σ e_k / |D|), ``per-client`` (each reply also times
    (1−p)/π̂_k, for deadline-driven stragglers) or ``ignore-stragglers``."""
    draw_stragglers: bool = True
    """Drop each asked client with probability ``p`` before sending."""
    server_lr: float = Field(0.5, gt=0)
    """The server's SGD step size on the decoded gradient."""
    server_momentum: float = Field(0.0, ge=0, lt=1)
    """The server's heavy-ball momentum."""
    seed: int | None = None
    """Seed of the straggler draws (null: from the run seed)."""


SPEC = add_algorithm(
    AlgorithmSpec(
        name="agc",
        server="fedsim.algorithms.agc.server:ApproxGradientCoding",
        client="fedsim.algorithms.agc.client",
        steps=(keys.STEP,),
        reply_prefixes=keys.REPLY_PREFIXES,
        dp_refusal=keys.DP_REFUSAL,
        params=AGCParams,
        help="approximate gradient coding with non-private data sharing (Makkonen et al.)",
    )
)
