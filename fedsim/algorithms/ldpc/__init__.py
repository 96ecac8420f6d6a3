"""Gradient descent on moment-encoded least squares, decoded by peeling (LDPC).

The spec; the strategy is in ``server.py``, the client half in ``client.py``.
"""

from __future__ import annotations

from fedsim.algorithms import add_algorithm
from fedsim.algorithms.ldpc import keys
from fedsim.algorithms.spec import AlgorithmSpec

SPEC = add_algorithm(
    AlgorithmSpec(
        name="ldpc",
        server="fedsim.algorithms.ldpc.server:MomentEncodedGD",
        client="fedsim.algorithms.ldpc.client",
        steps=("moment-product",),
        dp_refusal=keys.DP_REFUSAL,
        trains_with_loss=False,
        help="gradient descent on LDPC moment-encoded least squares (Maity et al.)",
    )
)
