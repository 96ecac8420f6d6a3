"""FedCurv: FedAvg with an EWC (diagonal Fisher) penalty on clients.

The spec; the strategy is in ``server.py``, the client half in ``client.py``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedsim.algorithms import add_algorithm
from fedsim.algorithms.fedcurv import keys
from fedsim.algorithms.params import FedAvgParams
from fedsim.algorithms.spec import AlgorithmSpec


class FedCurvParams(FedAvgParams):
    """FedCurv's ``strategy.params`` (and Flower's FedAvg ones)."""

    curv_lambda: float = Field(0.01, ge=0)
    """λ, the weight of the EWC penalty (0 is FedAvg exactly)."""
    fisher: Literal["empirical", "batch"] = "empirical"
    """``empirical``: the mean over the local data of squared per-example gradients at the
    trained θ (``torch.func``); ``batch``: OpenFL's estimate, the squared batch-mean
    gradient of the last batch, for comparison."""


SPEC = add_algorithm(
    AlgorithmSpec(
        name="fedcurv",
        server="fedsim.algorithms.fedcurv.server:FedCurv",
        client="fedsim.algorithms.fedcurv.client",
        steps=(keys.STEP,),
        reply_prefixes=keys.REPLY_PREFIXES,
        dp_refusal=keys.DP_REFUSAL,
        params=FedCurvParams,
        help="FedAvg with an EWC (diagonal Fisher) penalty (Shoham et al. 2019)",
    )
)
