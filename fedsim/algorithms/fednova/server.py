"""``fednova``: federated normalized averaging (Wang et al., NeurIPS 2020).

Clients that take different numbers of local steps τ_i pull plain FedAvg towards the
optimum of a different objective (the clients weighted by p_i τ_i instead of p_i).
FedNova normalises each client's update by its work: with d_i = (x - y_i) / τ_i the
server steps ``x <- x - τ_eff Σ p_i d_i``, τ_eff = Σ p_i τ_i, p_i = n_i / Σ n. When every
client takes the same τ this is FedAvg's average.

Ours covers local SGD without momentum (a_i = τ_i in the paper's notation), which
validation enforces; the paper's momentum and proximal variants (other a_i) are not
implemented. The step count comes from the clients' ``fednova-steps`` metric
(``client.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedsim import wire
from fedsim.algorithms.fedavg.server import (
    FedAvg,
    single_records,
    weighted_arrays,
    weighted_metrics,
)
from fedsim.algorithms.fednova import keys
from fedsim.config.schema import Scenario
from fedsim.errors import Problem
from fedsim.strategies import register_strategy


@register_strategy("fednova")
class FedNova(FedAvg):
    """FedAvg with each client's update normalised by its local steps.

    Takes Flower's :class:`~flwr.serverapp.strategy.FedAvg` parameters.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sent = ArrayRecord()  # this round's x

    @classmethod
    def check(cls, scenario: Scenario, params: Mapping[str, Any]) -> list[Problem]:
        """Only plain local SGD: with momentum τ_i is not the norm of a_i."""
        if scenario.client.optimizer.momentum:
            reason = "fednova (ours) normalises plain SGD updates: set it to 0"
            return [Problem("client.optimizer.momentum", reason)]
        return []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask for the fednova step; remember x."""
        config[wire.LOCAL_STEP] = keys.STEP
        self._sent = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """``x - τ_eff Σ p_i (x - y_i) / τ_i``; the metrics as FedAvg averages them."""
        valid, _ = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        if not valid:
            return None, None
        parts = single_records(valid, self.weighted_by_key)
        if parts is None:  # inconsistent replies: Flower's checks say what is wrong
            return super().aggregate_train(server_round, valid)
        weights = [float(m[self.weighted_by_key]) for _, m in parts]  # type: ignore[arg-type]
        steps = [float(m.get(keys.FEDNOVA_STEPS, 0.0)) for _, m in parts]  # type: ignore[arg-type]
        total = sum(weights)
        p = [w / total for w in weights]
        tau_eff = sum(pi * t for pi, t in zip(p, steps, strict=True))
        # x_new = (1 - Σ f_i) x + Σ f_i y_i with f_i = τ_eff p_i / τ_i (τ_i = 0: y_i = x).
        factors = [tau_eff * pi / t if t > 0 else 0.0 for pi, t in zip(p, steps, strict=True)]
        records = [self._sent, *(a for a, _ in parts)]
        return (
            weighted_arrays(records, [1.0 - sum(factors), *factors]),
            weighted_metrics([m for _, m in parts], p, self.weighted_by_key),
        )
