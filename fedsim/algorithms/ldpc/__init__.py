"""Gradient descent on moment-encoded least squares, decoded by peeling (LDPC).

The spec; the strategy is in ``server.py``, the client half in ``client.py``.
"""

from __future__ import annotations

from pydantic import Field

from fedsim.algorithms import add_algorithm
from fedsim.algorithms.ldpc import keys
from fedsim.algorithms.params import FedAvgParams
from fedsim.algorithms.spec import AlgorithmSpec


class LDPCParams(FedAvgParams):
    """LDPC moment encoding's ``strategy.params`` (and Flower's FedAvg ones)."""

    lr: float = Field(0.5, gt=0)
    """Step size on the decoded gradient / N."""
    max_iterations: int = Field(100, ge=1)
    """Cap on the peeling decoder's passes."""
    gradient_scale: float = Field(1.0, gt=0)
    """Constant the decoded gradient is multiplied by before the step; ``1/(1-p)`` makes
    the uncoded gradient unbiased when each client straggles with probability ``p``
    (the ``uncoded-rescaled`` baseline)."""


SPEC = add_algorithm(
    AlgorithmSpec(
        name="ldpc",
        server="fedsim.algorithms.ldpc.server:MomentEncodedGD",
        client="fedsim.algorithms.ldpc.client",
        steps=(keys.STEP,),
        dp_refusal=keys.DP_REFUSAL,
        trains_with_loss=False,
        params=LDPCParams,
        help="gradient descent on LDPC moment-encoded least squares (Maity et al.)",
    )
)
