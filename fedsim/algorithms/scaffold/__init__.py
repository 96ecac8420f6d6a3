"""``scaffold``: stochastic controlled averaging (Karimireddy et al. 2020).

The spec; the strategy is in ``server.py``, the client half in ``client.py``.
"""

from __future__ import annotations

from fedsim.algorithms import add_algorithm
from fedsim.algorithms.spec import AlgorithmSpec

SPEC = add_algorithm(
    AlgorithmSpec(
        name="scaffold",
        server="fedsim.algorithms.scaffold.server:Scaffold",
        client="fedsim.algorithms.scaffold.client",
        steps=("scaffold",),
        help="stochastic controlled averaging (Karimireddy et al. 2020)",
    )
)
