"""``fedavg``: Flower's FedAvg with a one-pass aggregation (the base others subclass).

The spec; the strategy is in ``server.py``, the client half in ``client.py``.
"""

from __future__ import annotations

from fedsim.algorithms import add_algorithm
from fedsim.algorithms.params import FedAvgParams
from fedsim.algorithms.spec import AlgorithmSpec

SPEC = add_algorithm(
    AlgorithmSpec(
        name="fedavg",
        server="fedsim.algorithms.fedavg.server:FedAvg",
        steps=("plain", "proximal"),
        params=FedAvgParams,
        help="Flower's FedAvg, aggregating in one pass",
    )
)
