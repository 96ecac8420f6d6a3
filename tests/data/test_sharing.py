"""AGC's sharing plan: who holds what, and what the offline phase costs."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.data.federated import FederatedData
from fedsim.data.sharing import make_plan
from tests.conftest import block_data


def _data(sizes: list[int], seed: int = 0) -> FederatedData:
    """Clients own consecutive blocks of ``sizes`` examples of 8 float32 features."""
    return block_data(sizes, 8, 3, seed)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("c", "d"), [(0.3, 3), (0.5, 5), (1.0, 2), (0.2, 1), (0.0, 4)])
def test_every_nonprivate_example_is_held_by_d_clients_including_its_owner(
    c: float, d: int
) -> None:
    sizes = [37, 50, 12, 81, 40, 23]
    data = _data(sizes)
    plan = make_plan(data, c, d, seed=7)
    n = len(data.y)
    owner = np.concatenate([np.full(s, k) for k, s in enumerate(sizes)])
    holders: list[set[int]] = [set() for _ in range(n)]
    for k in range(len(sizes)):
        held = np.concatenate([plan.private[k], plan.shared[k]])
        assert len(np.unique(held)) == len(held)  # nobody holds an example twice
        for i in held:
            holders[int(i)].add(k)
    nonprivate = np.concatenate(plan.nonprivate)
    private = np.concatenate(plan.private)
    assert len(nonprivate) + len(private) == n and len(np.intersect1d(nonprivate, private)) == 0
    for k, s in enumerate(sizes):
        assert len(plan.nonprivate[k]) == round(c * s)
    for i in nonprivate:
        assert len(holders[int(i)]) == d and owner[i] in holders[int(i)]
    for i in private:
        assert holders[int(i)] == {owner[i]}
    expected = (d - 1) * len(nonprivate)
    log = plan.transfer_log()
    assert plan.transfer_samples == expected == log["offline_transfer_samples"]
    assert log["offline_transfer_bytes"] == expected * (8 * 4 + 8)  # float32 x8 + int64 label
    assert plan.num_examples == n


def test_plan_is_deterministic_per_seed_and_receivers_vary() -> None:
    data = _data([60] * 8)
    a, b, other = (make_plan(data, 0.5, 3, s) for s in (1, 1, 2))
    assert all(np.array_equal(x, y) for x, y in zip(a.shared, b.shared, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a.shared, other.shared, strict=True))
    # Receivers are drawn per example: each client's shared examples reach several others.
    received_by = [set() for _ in range(8)]  # type: ignore[var-annotated]
    for k in range(8):
        for j in range(8):
            if j != k and len(np.intersect1d(a.nonprivate[k], a.shared[j])):
                received_by[k].add(j)
    assert all(len(r) >= 4 for r in received_by)


def test_encoding_weights() -> None:
    plan = make_plan(_data([10, 10, 10]), 0.4, 3, seed=0)
    idx, holders = plan.held(0)
    assert len(idx) == 6 + 4 * 3  # 6 private + every non-private example (d = all 3 clients)
    np.testing.assert_array_equal(holders[:6], 1)  # private: the owner alone
    np.testing.assert_array_equal(holders[6:], 3)  # non-private: d holders


@pytest.mark.parametrize(("c", "d"), [(-0.1, 2), (1.5, 2), (0.1, 0), (0.1, 4)])
def test_invalid_c_or_d(c: float, d: int) -> None:
    with pytest.raises(ValueError, match="must be in"):
        make_plan(_data([5, 5, 5]), c, d, seed=0)
