"""FedAwS: federated averaging with spreadout, for clients that hold one class each.

The spec; the strategy is in ``server.py``, the client half in ``client.py``.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from fedsim.algorithms import add_algorithm
from fedsim.algorithms.fedaws import keys
from fedsim.algorithms.params import FedAvgParams, one_of
from fedsim.algorithms.spec import AlgorithmSpec


class FedAwSParams(FedAvgParams):
    """FedAwS's ``strategy.params`` (and Flower's FedAvg ones)."""

    positive_margin: float = Field(0.9, ge=-1, le=1)
    """ν_pos, the cosine each example is pulled up to."""
    margin: float | None = None
    """ν; null: the distance of two orthogonal unit rows (2 for ``sqeuclid``, 1 for
    ``cosine``)."""
    distance: str = "sqeuclid"
    """``sqeuclid`` (‖w_c − w_c'‖²) or ``cosine`` (1 − cos)."""
    top_k: int | None = Field(None, ge=1)
    """Only the k nearest other classes of each class (null: all)."""
    spread_steps: int = Field(1, ge=0)
    """Regularizer steps per round."""
    spread_lr: float = Field(0.1, ge=0)
    """η: a step moves ``W`` by ``−λη ∇reg(W)``."""
    spread_weight: float = Field(1.0, ge=0)
    """λ: a step moves ``W`` by ``−λη ∇reg(W)``."""
    train_embeddings: bool = True
    """False: ``W`` stays at its random start, clients train θ only (``frozen-w``)."""
    spreadout: bool = True
    """False: rows written back with no regularizer (the positive-only baseline)."""

    @field_validator("fraction_evaluate")
    @classmethod
    def _no_federated_evaluation(cls, share: float) -> float:
        # Federated evaluation would need W on the clients; fedsim evaluates centrally.
        if share > 0:
            raise ValueError(f"must be 0 (fedaws keeps W on the server), got {share}")
        return share

    @field_validator("distance")
    @classmethod
    def _known_distance(cls, value: str) -> str:
        from fedsim.algorithms.fedaws.spreadout import DISTANCES

        return one_of(value, DISTANCES.names())


SPEC = add_algorithm(
    AlgorithmSpec(
        name="fedaws",
        server="fedsim.algorithms.fedaws.server:FedAwS",
        client="fedsim.algorithms.fedaws.client",
        steps=(keys.STEP,),
        actions=(f"query.{keys.QUERY_LABELS}",),
        dp_refusal=keys.DP_REFUSAL,
        params=FedAwSParams,
        help="federated averaging with spreadout (Yu et al. 2020)",
    )
)
