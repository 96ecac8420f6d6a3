"""FedCurv: FedAvg with an EWC (diagonal Fisher) penalty on clients.

Shoham et al., "Overcoming Forgetting in Federated Learning on Non-IID Data" (2019).

Client contract
---------------
Train messages carry, besides the model, ``curv-lambda`` and ``curv-fisher`` in the
config and (from the second round on) the sums over the last round's participants
``U = Σ F_j``, ``V = Σ F_j⊙θ_j``, ``W = Σ F_j⊙θ_j²`` as ``curv.U.<name>`` etc. in the
model's ArrayRecord. Clients (``clients/curvature.py``) subtract their own last terms,
add ``λ Σ [θ²⊙(U-u) - 2θ⊙(V-v) + (W-w)]`` to their loss, and reply with the trained
model plus ``curv.F.<name>`` (the Fisher diagonal at the trained θ) and
``curv.FT.<name>`` (F⊙θ).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim import wire
from fedsim.strategies import register_strategy

FISHER_ESTIMATORS = ("empirical", "batch")


@register_strategy("fedcurv")
class FedCurv(FedAvg):
    """FedAvg plus the curvature sums clients need for their EWC penalty.

    Parameters
    ----------
    curv_lambda : float
        Penalty weight λ ≥ 0; 0 is FedAvg exactly.
    fisher : {"empirical", "batch"}
        Clients' Fisher estimate: the mean of squared per-example gradients over the
        local data, or OpenFL's squared batch-mean gradient of the last batch.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(
        self, *, curv_lambda: float = 0.01, fisher: str = "empirical", **kwargs: Any
    ) -> None:
        if curv_lambda < 0:
            raise ValueError(f"curv_lambda must be >= 0, got {curv_lambda}")
        if fisher not in FISHER_ESTIMATORS:
            raise ValueError(f"fisher must be one of {FISHER_ESTIMATORS}, got '{fisher}'")
        super().__init__(**kwargs)
        self.curv_lambda, self.fisher = curv_lambda, fisher
        self.sums: dict[str, np.ndarray] = {}  # "curv.U.<name>" etc. from the last round

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send λ, the estimator and the last round's sums along with the model."""
        config[wire.CURV_LAMBDA] = self.curv_lambda
        config[wire.CURV_FISHER] = self.fisher
        payload = ArrayRecord(dict(arrays.items()))
        for key, value in self.sums.items():
            payload[key] = Array(value)
        return super().configure_train(server_round, payload, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average θ by examples (FedAvg's own code) and sum U, V, W unweighted."""
        replies = list(replies)
        sums: dict[str, np.ndarray] = {}
        prefix = wire.CURV_PREFIX
        for msg in replies:
            if msg.has_error() or wire.ARRAYS not in msg.content.array_records:
                continue
            record = msg.content.array_records[wire.ARRAYS]
            theta = ArrayRecord({k: v for k, v in record.items() if not k.startswith(prefix)})
            for name, value in theta.items():
                f_key, ft_key = f"{prefix}F.{name}", f"{prefix}FT.{name}"
                if f_key not in record or ft_key not in record:
                    continue
                f, ft = record[f_key].numpy(), record[ft_key].numpy()
                for kind, term in (("U", f), ("V", ft), ("W", ft * value.numpy())):
                    key = f"{prefix}{kind}.{name}"
                    sums[key] = sums[key] + term if key in sums else term.astype(np.float64)
            msg.content[wire.ARRAYS] = theta  # FedAvg below sees the model only
        if sums:
            self.sums = {k: v.astype(np.float32) for k, v in sums.items()}
        return super().aggregate_train(server_round, replies)
