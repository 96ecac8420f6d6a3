"""``fednova``: federated normalized averaging (Wang et al. 2020).

The spec; the strategy is in ``server.py``, the client step in ``client.py``.
"""

from __future__ import annotations

from fedsim.algorithms import add_algorithm
from fedsim.algorithms.fednova import keys
from fedsim.algorithms.params import FedAvgParams
from fedsim.algorithms.spec import AlgorithmSpec

SPEC = add_algorithm(
    AlgorithmSpec(
        name="fednova",
        server="fedsim.algorithms.fednova.server:FedNova",
        client="fedsim.algorithms.fednova.client",
        steps=(keys.STEP,),
        params=FedAvgParams,
        help="FedAvg with updates normalised by local steps (Wang et al. 2020)",
    )
)
