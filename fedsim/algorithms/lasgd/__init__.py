"""LASGD: decentralised SGD whose model averaging overlaps computation.

The spec; the strategy is in ``server.py``, the client half in ``client.py``.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from fedsim.algorithms import add_algorithm
from fedsim.algorithms.lasgd import keys
from fedsim.algorithms.params import StrategyParams, one_of
from fedsim.algorithms.spec import VIRTUAL_CLOCK, AlgorithmSpec


class LASGDParams(StrategyParams):
    """LASGD's ``strategy.params`` (it runs its own loop: no Flower FedAvg parameters)."""

    alpha: float = Field(1.0, ge=0, le=1)
    """α in x ← x̄ + α(x − s); 1 keeps the workers' mean."""
    period: int = Field(5, ge=1)
    """H: local jobs between snapshots."""
    in_flight: int = Field(1, ge=0)
    """Exchanges a worker may have under way; 0 blocks at every snapshot (synchronous)."""
    communication: str = "allreduce"
    """``allreduce`` (ring All-Reduce, the merge above) or ``gossip`` (push-sum)."""
    eval_interval_s: float = Field(10.0, gt=0)
    """Simulated seconds between central evaluations of the mean worker model; the budget
    is ``rounds × eval_interval_s``."""

    @field_validator("communication")
    @classmethod
    def _known_communication(cls, value: str) -> str:
        from fedsim.algorithms.lasgd.communication import COMMUNICATIONS

        return one_of(value, COMMUNICATIONS.names())


SPEC = add_algorithm(
    AlgorithmSpec(
        name="lasgd",
        server="fedsim.algorithms.lasgd.server:LASGD",
        client="fedsim.algorithms.lasgd.client",
        actions=(f"train.{keys.LASGD_ACTION}",),
        needs=(VIRTUAL_CLOCK,),
        params=LASGDParams,
        help="local asynchronous SGD, exchanges overlapping compute (Edgify)",
    )
)
