"""``demlearn``: self-organising hierarchical learning (Nguyen et al. 2022).

The spec; the strategy is in ``server.py`` (the tree's math in ``hierarchy.py``), the
client half in ``client.py``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from fedsim.algorithms import add_algorithm
from fedsim.algorithms.demlearn import keys
from fedsim.algorithms.params import FedAvgParams, one_of
from fedsim.algorithms.spec import AlgorithmSpec


class DemLearnParams(FedAvgParams):
    """DemLearn's ``strategy.params`` (and Flower's FedAvg ones)."""

    groups: list[int] = Field(default_factory=lambda: [4, 2])
    """Groups per level between the agents and the root, bottom up, strictly decreasing,
    each ≥ 2 (``[]``: the root alone = FedAvg); a level never has more groups than
    agents."""
    recluster_every: int = Field(5, ge=1)
    """τ: rebuild the hierarchy in rounds 1, 1 + τ, …"""
    linkage: Literal["single", "complete", "average", "weighted", "ward"] = "ward"
    """scipy's method (``centroid`` and ``median`` can invert the dendrogram, so their
    cuts would not nest: refused)."""
    metric: str = "euclidean"
    """A ``scipy.spatial.distance.pdist`` metric (``ward`` needs ``euclidean``)."""
    cluster_on: Literal["models", "updates"] = "models"
    """``models`` or ``updates`` (zero for an agent that has not trained yet)."""
    mixing: float = Field(0.5, ge=0, le=1)
    """β ∈ [0, 1], the mixing weight (above)."""
    personalized: bool = False
    """DemLearn-P."""

    @field_validator("groups")
    @classmethod
    def _shrinking(cls, groups: list[int]) -> list[int]:
        from fedsim.algorithms.demlearn.hierarchy import check_groups

        check_groups(groups)
        return groups

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str, info: ValidationInfo) -> str:
        from scipy.spatial.distance import _METRICS_NAMES

        one_of(metric, sorted(_METRICS_NAMES))
        linkage = info.data.get("linkage")
        if linkage == "ward" and metric != "euclidean":  # scipy's Ward is Euclidean only
            raise ValueError(f"must be 'euclidean' with linkage {linkage!r}, got {metric!r}")
        return metric


SPEC = add_algorithm(
    AlgorithmSpec(
        name="demlearn",
        server="fedsim.algorithms.demlearn.server:DemLearn",
        client="fedsim.algorithms.demlearn.client",
        steps=(keys.STEP,),
        dp_refusal=keys.DP_REFUSAL,
        params=DemLearnParams,
        help="DemLearn(-P): self-organised hierarchy of agents' models (Nguyen et al. 2022)",
    )
)
