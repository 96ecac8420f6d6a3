"""Colluding attacks (ALIE, IPM): the server-side stand-in replaces exactly the flagged
replies by the papers' formulas, computed here independently, coordinate by coordinate."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

import fedsim
from fedsim import wire
from fedsim.config.schema import AlieAttack, IpmAttack
from fedsim.engine.flower_compat import set_task_identity
from fedsim.strategies.collusion import ColludingAttackers, alie_z

G = np.array([[0.5, -1.0], [2.0, 0.0]], np.float32)


class Recorder(FedAvg):
    """FedAvg that keeps the replies it was asked to aggregate."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Message] = []

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        self.seen = list(replies)
        return super().aggregate_train(server_round, self.seen)


def _replies(updates: list[np.ndarray], attackers: set[int]) -> list[Message]:
    set_task_identity(1)
    out = []
    for i, u in enumerate(updates):
        sent = Message(RecordDict(), dst_node_id=100 + i, message_type="train")
        arrays = ArrayRecord({"w": Array((G + u).astype(np.float32))})
        metrics = MetricRecord({"num-examples": 5, wire.ATTACKER_METRIC: int(i in attackers)})
        out.append(Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=sent))
    return out


def _run(attack: Any, updates: list[np.ndarray], attackers: set[int]) -> list[np.ndarray]:
    set_task_identity(1)
    inner = Recorder()
    wrapper = ColludingAttackers(inner, attack)
    wrapper.configure_train(1, ArrayRecord({"w": Array(G)}), ConfigRecord(), _Grid())  # type: ignore[arg-type]
    wrapper.aggregate_train(1, _replies(updates, attackers))
    return [m.content.array_records["arrays"]["w"].numpy() for m in inner.seen]


class _Grid:
    def get_node_ids(self) -> list[int]:
        return [100 + i for i in range(8)]


def test_alie_z_is_the_papers_z_max() -> None:
    """n = 20, m = 6: s = ⌊20/2 + 1⌋ - 6 = 5, z = Φ⁻¹(15/20) = 0.6745 (normal tables)."""
    assert alie_z(20, 6) == pytest.approx(0.67449, abs=1e-4)
    # n = 20, m = 2: s = 9, z = Φ⁻¹(11/20) = 0.1257.
    assert alie_z(20, 2) == pytest.approx(0.12566, abs=1e-4)


def _updates() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=G.shape).astype(np.float32) for _ in range(8)]


@pytest.mark.parametrize("z", [None, 1.5])
def test_alie_replaces_the_attackers_by_mean_minus_z_std_of_the_honest(z: float | None) -> None:
    updates, attackers = _updates(), {1, 4}
    got = _run(AlieAttack(z=z), updates, attackers)
    honest = [updates[i].astype(np.float64) for i in range(8) if i not in attackers]
    zz = alie_z(8, 2) if z is None else z
    expected = np.empty(G.shape)
    for idx in np.ndindex(*G.shape):  # coordinate by coordinate, by the definition
        values = [h[idx] for h in honest]
        mu = sum(values) / len(values)
        sigma = math.sqrt(sum((v - mu) ** 2 for v in values) / len(values))
        expected[idx] = mu - zz * sigma
    for i in range(8):
        want = G + (expected if i in attackers else updates[i])
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-6)


def test_ipm_replaces_the_attackers_by_minus_epsilon_times_the_honest_mean() -> None:
    updates, attackers = _updates(), {0, 5, 7}
    got = _run(IpmAttack(epsilon=0.5), updates, attackers)
    honest = [updates[i].astype(np.float64) for i in range(8) if i not in attackers]
    mean = sum(honest) / len(honest)
    for i in range(8):
        want = G + (-0.5 * mean if i in attackers else updates[i])
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-6)
    # The inner product with the honest mean is negative: the point of IPM.
    assert float(np.sum((got[0] - G) * mean)) < 0


def test_a_colluding_attack_needs_the_round_loop(tiny: dict[str, Any]) -> None:
    tiny["strategy"] = {"name": "lasgd", "params": {}}
    tiny["system"]["attackers"] = {"fraction": 0.25, "attack": "alie"}
    with pytest.raises(fedsim.ScenarioError, match=r"system\.attackers\.attack: 'alie' cannot"):
        fedsim.load_scenario(tiny)


def test_a_run_under_ipm_is_wrapped_and_counts_its_attackers(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    from fedsim.compose.strategy import build_strategy

    tiny["rounds"] = 1
    tiny["system"]["attackers"] = {"fraction": 0.5, "attack": {"name": "ipm", "epsilon": 2.0}}
    scenario = fedsim.load_scenario(tiny)
    assert isinstance(build_strategy(scenario), ColludingAttackers)
    result = fedsim.run(scenario, tmp_path / "r")
    assert result.metrics[-1]["attackers"] == 2
