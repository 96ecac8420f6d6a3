"""FedAwS: federated averaging with spreadout, for clients that hold one class each.

The spec; the strategy is in ``server.py``, the client half in ``client.py``.
"""

from __future__ import annotations

from fedsim.algorithms import add_algorithm
from fedsim.algorithms.fedaws import keys
from fedsim.algorithms.spec import AlgorithmSpec

SPEC = add_algorithm(
    AlgorithmSpec(
        name="fedaws",
        server="fedsim.algorithms.fedaws.server:FedAwS",
        client="fedsim.algorithms.fedaws.client",
        steps=("positive-only",),
        actions=(f"query.{keys.QUERY_LABELS}",),
        dp_refusal=keys.DP_REFUSAL,
        help="federated averaging with spreadout (Yu et al. 2020)",
    )
)
