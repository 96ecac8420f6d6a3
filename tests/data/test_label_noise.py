"""data.label_noise: exact per-class shares, seeded, training labels only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsim.config.schema import DataConfig, LabelNoiseConfig
from fedsim.data.federated import federated_data
from fedsim.data.label_noise import flipped_per_client, noisy_labels
from fedsim.data.node_data import node_data, write_partitions

TRAIN = np.repeat(np.arange(4), [10, 20, 30, 40])  # class c has 10(c+1) examples


@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
def test_exact_share_per_class_and_seeded(kind: str) -> None:
    cfg = LabelNoiseConfig(rate=0.3, kind=kind)
    noisy = noisy_labels(TRAIN, 4, cfg, seed=7)
    for c, n in enumerate([10, 20, 30, 40]):
        members = np.equal(TRAIN, c)
        assert int((noisy[members] != c).sum()) == round(0.3 * n)
        if kind == "pairflip":
            assert set(noisy[members][noisy[members] != c]) == {(c + 1) % 4}
    assert np.array_equal(noisy, noisy_labels(TRAIN, 4, cfg, seed=7))
    assert not np.array_equal(noisy, noisy_labels(TRAIN, 4, cfg, seed=8))


def test_matrix_sends_each_row_share() -> None:
    """Row c of T: class c sends round(T[c, j] * n_c) examples to class j."""
    t = [[0.5, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 0.9, 0.1], [0.25, 0.25, 0.25, 0.25]]
    noisy = noisy_labels(TRAIN, 4, LabelNoiseConfig(kind="matrix", matrix=t), seed=0)
    for c, n in enumerate([10, 20, 30, 40]):
        sent = np.bincount(noisy[np.equal(TRAIN, c)], minlength=4)
        assert sent.tolist() == [round(share * n) for share in t[c]]


def test_matrix_must_fit() -> None:
    with pytest.raises(ValueError, match="matrix"):
        LabelNoiseConfig(kind="matrix")
    with pytest.raises(ValueError, match="summing to 1"):
        LabelNoiseConfig(kind="matrix", matrix=[[0.5, 0.4], [0, 1]])


def test_training_labels_only_and_counted_per_client(tmp_path: Path) -> None:
    clean = DataConfig(num_clients=4)
    noisy_cfg = DataConfig(num_clients=4, label_noise={"rate": 0.4})
    a, b = federated_data(clean, 0), federated_data(noisy_cfg, 0)
    assert np.array_equal(a.y_test, b.y_test)  # test labels never noisy
    assert b.y_true is not None and np.array_equal(b.y_true, a.y)
    assert [list(p) for p in a.parts] == [list(p) for p in b.parts]  # same split
    for c in range(10):
        n = int((a.y == c).sum())
        assert int((b.y[a.y == c] != c).sum()) == round(0.4 * n)
    counts = flipped_per_client(b.y_true, b.y, b.parts)
    assert sum(r["flipped"] for r in counts) == int((b.y != a.y).sum())
    # The nodes and a deployed device's file (`fedsim deploy split`) get the noisy labels.
    assert np.array_equal(node_data(noisy_cfg, 0, 2, None).y, b.y[b.parts[2]])
    path = write_partitions(noisy_cfg, 0, tmp_path)[2]
    assert np.array_equal(node_data(noisy_cfg, 0, 2, str(path)).y, b.y[b.parts[2]])
