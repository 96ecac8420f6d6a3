"""``median-of-means``: robust train aggregation around any strategy.

The spec; the strategy is in ``server.py``, the client half in ``client.py``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedsim.algorithms import add_algorithm
from fedsim.algorithms.params import StrategyParams
from fedsim.algorithms.spec import AlgorithmSpec


class MedianOfMeansParams(StrategyParams):
    """Median-of-means's ``strategy.params`` (its inner ``strategy`` is walked apart)."""

    blocks: int = Field(5, ge=1)
    """K, blocks per round (K = n when fewer replies arrive)."""
    median: Literal["coordinate", "geometric"] = "coordinate"
    """The median of the block means: ``coordinate`` or ``geometric``."""
    tol: float = Field(1e-7, gt=0)
    """Weiszfeld's relative stopping tolerance."""
    blocks_sampling: Literal["without_replacement", "disjoint"] = "without_replacement"
    """``without_replacement``: K independent blocks of ⌊n/K⌋ replies each (the paper's);
    ``disjoint``: one permutation cut into K blocks."""
    seed: int | None = None
    """Seed of the block draws (null: from the run seed)."""


SPEC = add_algorithm(
    AlgorithmSpec(
        name="median-of-means",
        server="fedsim.algorithms.median_of_means.server:MedianOfMeans",
        params=MedianOfMeansParams,
        help="median of group means around any strategy (Laforgue et al. 2019)",
    )
)
