"""FedCurv: FedAvg with an EWC (diagonal Fisher) penalty on clients.

Shoham et al., "Overcoming Forgetting in Federated Learning on Non-IID Data" (2019).

Client contract
---------------
Train messages carry, besides the model, ``curv-lambda`` and ``curv-fisher`` in the
config and (once any client has replied) the sums over the replies the server
aggregated in the latest round that had any, ``U = Σ F_j``, ``V = Σ F_j⊙θ_j``,
``W = Σ F_j⊙θ_j²`` (summed in float64, sent in the clients' dtype) as
``curv.U.<name>`` etc. in the model's ArrayRecord, with ``curv-sums-round`` (that round)
and ``curv-members`` (the node ids, as strings, whose terms the sums hold) in the config.
Clients (``fedsim/algorithms/fedcurv/client.py``) subtract their own terms of that round
only if they
are members, add ``λ Σ [θ²⊙(U-u) - 2θ⊙(V-v) + (W-w)]`` to their loss, and reply with
the trained model plus ``curv.F.<name>`` (the Fisher diagonal at the trained θ) and
``curv.FT.<name>`` (F⊙θ).

Under partial participation (``fraction_train`` < 1, deadlines, dropouts, failures) the
sums cover whoever replied in time in that round: a round in which no reply arrives
keeps the previous sums and members.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim import wire
from fedsim.algorithms.fedcurv import FedCurvParams, keys
from fedsim.strategies import register_strategy


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
        FedCurvParams.checked(curv_lambda=curv_lambda, fisher=fisher)
        super().__init__(**kwargs)
        self.curv_lambda, self.fisher = curv_lambda, fisher
        self.sums: dict[str, np.ndarray] = {}  # "curv.U.<name>" etc.
        self.sums_round = 0  # the round whose replies the sums cover (0: none yet)
        self.members: list[str] = []  # node ids whose terms are in the sums

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send λ, the estimator and the last round's sums along with the model."""
        config[keys.CURV_LAMBDA] = self.curv_lambda
        config[keys.CURV_FISHER] = self.fisher
        if self.sums:
            config[keys.CURV_SUMS_ROUND] = self.sums_round
            config[keys.CURV_MEMBERS] = list(self.members)
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
        members: list[str] = []
        term_dtypes: dict[str, np.dtype[Any]] = {}
        prefix = keys.CURV_PREFIX
        for msg in replies:
            if msg.has_error() or wire.ARRAYS not in msg.content.array_records:
                continue
            record = msg.content.array_records[wire.ARRAYS]
            theta = ArrayRecord({k: v for k, v in record.items() if not k.startswith(prefix)})
            msg.content[wire.ARRAYS] = theta  # FedAvg below sees the model only
            # A reply counts only with a term for every parameter: the client subtracts
            # all of its terms or none.
            if not all(f"{prefix}F.{n}" in record and f"{prefix}FT.{n}" in record for n in theta):
                continue
            members.append(str(msg.metadata.src_node_id))
            for name, value in theta.items():
                f = record[f"{prefix}F.{name}"].numpy()
                ft = record[f"{prefix}FT.{name}"].numpy()
                # W's term in the dtype the client used for its own copy (F⊙θ)⊙θ, so
                # that a member's subtraction cancels its term exactly.
                for kind, term in (("U", f), ("V", ft), ("W", ft * value.numpy())):
                    key = f"{prefix}{kind}.{name}"
                    sums[key] = sums[key] + term if key in sums else term.astype(np.float64)
                    term_dtypes[key] = term.dtype
        if sums:
            # Summed in float64, sent in the clients' own dtype (float64 models keep
            # every digit; float32 ones do not pay double the download).
            self.sums = {k: v.astype(term_dtypes[k]) for k, v in sums.items()}
            self.sums_round, self.members = server_round, members
        return super().aggregate_train(server_round, replies)
