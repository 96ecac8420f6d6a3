"""``demlearn``: self-organising hierarchical learning (Nguyen et al. 2022).

The spec; the strategy is in ``server.py`` (the tree's math in ``hierarchy.py``), the
client half in ``client.py``.
"""

from __future__ import annotations

from fedsim.algorithms import add_algorithm
from fedsim.algorithms.demlearn import keys
from fedsim.algorithms.spec import AlgorithmSpec

SPEC = add_algorithm(
    AlgorithmSpec(
        name="demlearn",
        server="fedsim.algorithms.demlearn.server:DemLearn",
        client="fedsim.algorithms.demlearn.client",
        steps=(keys.STEP,),
        dp_refusal=keys.DP_REFUSAL,
        help="DemLearn(-P): self-organised hierarchy of agents' models (Nguyen et al. 2022)",
    )
)
