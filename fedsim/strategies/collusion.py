"""Colluding attackers (``system.attackers.attack: alie | ipm``), simulated on the server.

ALIE and IPM craft one malicious update from the round's honest updates, which no
single client sees: the attackers must coordinate. fedsim simulates the omniscient
adversary that robust-aggregation papers evaluate. The attackers train honestly and
flag their replies (the ``attacker`` metric, :mod:`fedsim.clients.attacks`); this
wrapper, applied by the ServerApp around the scenario's strategy, replaces every
flagged train reply's model arrays by ``g + u'`` before the wrapped strategy
aggregates, with g the model the round sent and, over the round's honest updates
``u_j = w_j - g`` (coordinate-wise, unweighted):

- ``alie`` (Baruch, Baruch & Goldberg, "A Little Is Enough", NeurIPS 2019):
  ``u' = μ - z·σ``, μ and σ the mean and (population) standard deviation. Unless the
  scenario gives z, it is the paper's ``z_max = Φ⁻¹((n - s)/n)`` with
  ``s = ⌊n/2 + 1⌋ - m`` (at least 1) for the round's n replies of which m are
  attackers': the largest shift the needed majority of honest updates still looks
  "further out" than.
- ``ipm`` (Xie, Koyejo & Gupta, "Fall of Empires", UAI 2019): ``u' = -ε·μ``.

If no honest reply arrived in a round, the attackers' own honest updates stand in for
them. All attackers reply the same update, as in both papers. The formulas are the
papers'; applying them to model updates (not gradients) and deciding the shifts from
the round's delivered replies is fedsim's reconstruction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from statistics import NormalDist
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim import wire
from fedsim.array_codec import decode
from fedsim.config.schema import AlieAttack, IpmAttack
from fedsim.model_updates import Update, replace_update, update_of
from fedsim.registry import Registry
from fedsim.strategies.wrapper import StrategyWrapper

# name -> (honest updates, replies n, attackers m, the attack's config) -> u'
Collusion = Callable[[list[Update], int, int, Any], Update]
COLLUSIONS: Registry[Collusion] = Registry("colluding attacks")


def alie_z(n: int, m: int) -> float:
    """ALIE's ``z_max = Φ⁻¹((n - s)/n)``, ``s = max(1, ⌊n/2 + 1⌋ - m)``."""
    s = max(1, math.floor(n / 2 + 1) - m)
    return NormalDist().inv_cdf((n - s) / n) if n > s else 0.0


def _stack(updates: list[Update], key: str) -> np.ndarray:
    return np.stack([u[key].astype(np.float64) for u in updates])


@COLLUSIONS.register("alie", help="g + mean - z * std of the honest updates")
def alie(updates: list[Update], n: int, m: int, cfg: AlieAttack) -> Update:
    """``μ - z·σ`` coordinate-wise over ``updates``."""
    z = alie_z(n, m) if cfg.z is None else cfg.z
    out = {}
    for key, first in updates[0].items():
        stacked = _stack(updates, key)
        out[key] = (stacked.mean(0) - z * stacked.std(0)).astype(first.dtype)
    return out


@COLLUSIONS.register("ipm", help="g - epsilon * mean of the honest updates")
def ipm(updates: list[Update], n: int, m: int, cfg: IpmAttack) -> Update:
    """``-ε·μ`` over ``updates``."""
    return {
        key: (-cfg.epsilon * _stack(updates, key).mean(0)).astype(first.dtype)
        for key, first in updates[0].items()
    }


def is_flagged(reply: Message) -> bool:
    """Whether a reply came from an attacking node (its ``attacker`` metric is 1)."""
    return any(
        int(record.get(wire.ATTACKER_METRIC, 0)) == 1  # type: ignore[arg-type]
        for record in reply.content.metric_records.values()
    )


class ColludingAttackers(StrategyWrapper):
    """Replace the flagged train replies by the colluding attack's update.

    Parameters
    ----------
    strategy : Strategy
        The wrapped strategy (any that runs Flower's round loop).
    attack : AlieAttack or IpmAttack
        The scenario's ``system.attackers.attack``.
    """

    def __init__(self, strategy: Strategy, attack: AlieAttack | IpmAttack) -> None:
        super().__init__(strategy)
        self.attack = attack
        self._sent: dict[str, np.ndarray] = {}  # the round's model g

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's messages; remember the model they carry."""
        self._sent = {k: decode(v) for k, v in arrays.items()}
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Corrupt the attackers' replies, then aggregate with the wrapped strategy."""
        replies = list(replies)
        valid = [r for r in replies if not r.has_error() and wire.ARRAYS in r.content]
        attackers = [r for r in valid if is_flagged(r)]
        if attackers:
            honest = [r for r in valid if not is_flagged(r)] or attackers
            updates = [update_of(r.content.array_records[wire.ARRAYS], self._sent) for r in honest]
            malicious = COLLUSIONS.get(self.attack.name)(
                updates, len(valid), len(attackers), self.attack
            )
            for reply in attackers:
                replace_update(reply.content.array_records[wire.ARRAYS], self._sent, malicious)
        return self.strategy.aggregate_train(server_round, replies)
