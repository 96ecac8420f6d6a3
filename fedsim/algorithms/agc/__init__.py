"""Approximate gradient coding with non-private data sharing (AGC).

The spec; the strategy is in ``server.py``, the client half in ``client.py``.
"""

from __future__ import annotations

from fedsim.algorithms import add_algorithm
from fedsim.algorithms.agc import keys
from fedsim.algorithms.spec import AlgorithmSpec

SPEC = add_algorithm(
    AlgorithmSpec(
        name="agc",
        server="fedsim.algorithms.agc.server:ApproxGradientCoding",
        client="fedsim.algorithms.agc.client",
        steps=("coded-gradient",),
        reply_prefixes=keys.REPLY_PREFIXES,
        dp_refusal=keys.DP_REFUSAL,
        help="approximate gradient coding with non-private data sharing (Makkonen et al.)",
    )
)
