"""FedCurv: FedAvg with an EWC (diagonal Fisher) penalty on clients.

The spec; the strategy is in ``server.py``, the client half in ``client.py``.
"""

from __future__ import annotations

from fedsim.algorithms import add_algorithm
from fedsim.algorithms.fedcurv import keys
from fedsim.algorithms.spec import AlgorithmSpec

SPEC = add_algorithm(
    AlgorithmSpec(
        name="fedcurv",
        server="fedsim.algorithms.fedcurv.server:FedCurv",
        client="fedsim.algorithms.fedcurv.client",
        steps=("curvature",),
        reply_prefixes=keys.REPLY_PREFIXES,
        dp_refusal=keys.DP_REFUSAL,
        help="FedAvg with an EWC (diagonal Fisher) penalty (Shoham et al. 2019)",
    )
)
