"""``scaffold``: stochastic controlled averaging (Karimireddy et al. 2020).

The spec; the strategy is in ``server.py``, the client half in ``client.py``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedsim.algorithms import add_algorithm
from fedsim.algorithms.params import FedAvgParams
from fedsim.algorithms.scaffold import keys
from fedsim.algorithms.spec import AlgorithmSpec


class ScaffoldParams(FedAvgParams):
    """SCAFFOLD's ``strategy.params`` (and Flower's FedAvg ones)."""

    option: Literal["I", "II"] = "II"
    """How clients update ``c_i``: ``I``, the gradient of their data at the server model
    (one more pass); ``II``, from their own update."""
    server_lr: float = Field(1.0, gt=0)
    """η_g, the server's step size on the averaged update."""


SPEC = add_algorithm(
    AlgorithmSpec(
        name="scaffold",
        server="fedsim.algorithms.scaffold.server:Scaffold",
        client="fedsim.algorithms.scaffold.client",
        steps=(keys.STEP,),
        params=ScaffoldParams,
        help="stochastic controlled averaging (Karimireddy et al. 2020)",
    )
)
