"""``median-of-means``: robust train aggregation around any strategy.

The spec; the strategy is in ``server.py``, the client half in ``client.py``.
"""

from __future__ import annotations

from fedsim.algorithms import add_algorithm
from fedsim.algorithms.spec import AlgorithmSpec

SPEC = add_algorithm(
    AlgorithmSpec(
        name="median-of-means",
        server="fedsim.algorithms.median_of_means.server:MedianOfMeans",
        help="median of group means around any strategy (Laforgue et al. 2019)",
    )
)
