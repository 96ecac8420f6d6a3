"""LASGD: decentralised SGD whose model averaging overlaps computation.

The spec; the strategy is in ``server.py``, the client half in ``client.py``.
"""

from __future__ import annotations

from fedsim.algorithms import add_algorithm
from fedsim.algorithms.lasgd import keys
from fedsim.algorithms.spec import VIRTUAL_CLOCK, AlgorithmSpec

SPEC = add_algorithm(
    AlgorithmSpec(
        name="lasgd",
        server="fedsim.algorithms.lasgd.server:LASGD",
        client="fedsim.algorithms.lasgd.client",
        actions=(f"train.{keys.LASGD_ACTION}",),
        needs=(VIRTUAL_CLOCK,),
        help="local asynchronous SGD, exchanges overlapping compute (Edgify)",
    )
)
