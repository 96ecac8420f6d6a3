"""Embedded and local datasets, and the federated split built from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsim.config.schema import DataConfig
from fedsim.data.datasets import DATASETS, load_dataset
from fedsim.data.federated import federated_data
from fedsim.errors import DataUnavailableError


def test_digits_is_embedded() -> None:
    ds = load_dataset(DataConfig().dataset)
    assert ds.x.shape == (1797, 1, 8, 8) and ds.y.shape == (1797,)
    assert ds.x.dtype == np.float32 and ds.x.min() >= 0.0 and ds.x.max() <= 1.0
    assert ds.num_classes == 10


def test_digits_cache_holds_scikit_learns_images_exactly() -> None:
    from sklearn.datasets import load_digits

    first = load_dataset(DataConfig().dataset)  # may write the cache
    cached = load_dataset(DataConfig().dataset)  # reads it
    reference = load_digits()
    expected = (reference.images.astype(np.float32) / 16.0)[:, None]
    assert np.array_equal(first.x, expected) and np.array_equal(cached.x, expected)
    assert np.array_equal(cached.y, reference.target)


def test_mnist1d_is_generated_and_cached(tmp_path: Path) -> None:
    cfg = DataConfig.model_validate({"dataset": {"name": "mnist1d", "num_samples": 400}}).dataset
    ds = load_dataset(cfg)
    assert ds.x.shape == (320, 40) and ds.x_test is not None and ds.x_test.shape == (80, 40)
    again = load_dataset(cfg)  # second call reads the cached file
    assert np.array_equal(ds.x, again.x)


def test_npz_roundtrip(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    y = np.arange(50) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y)
    cfg = DataConfig.model_validate({"dataset": f"npz:{tmp_path / 'd.npz'}"}).dataset
    ds = load_dataset(cfg)
    assert np.array_equal(ds.x, x) and ds.num_classes == 4


def test_npz_without_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", features=np.zeros(3))
    cfg = DataConfig.model_validate({"dataset": f"npz:{tmp_path / 'd.npz'}"}).dataset
    with pytest.raises(DataUnavailableError, match=r"lacks arrays \['x', 'y'\]"):
        load_dataset(cfg)


def test_registry_lists_the_embedded_datasets() -> None:
    assert {"digits", "mnist1d", "npz", "hf"} <= set(DATASETS.names())


def test_federated_split_is_disjoint_and_test_set_fixed_across_seeds() -> None:
    cfg = DataConfig.model_validate({"num_clients": 5, "partitioner": "iid"})
    a, b = federated_data(cfg, 0), federated_data(cfg, 1)
    assert len(a.y) + len(a.y_test) == 1797
    assert np.array_equal(a.y_test, b.y_test)  # every seed is scored on the same test set
    assert sum(len(p) for p in a.parts) == len(a.y)
    assert not all(np.array_equal(p, q) for p, q in zip(a.parts, b.parts, strict=True))
    assert federated_data(cfg, 0) is a  # computed once per process


def test_hub_dataset_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # More in tests/data/test_hub.py (local copies, the real offline probe).
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = DataConfig.model_validate({"dataset": "hf:ylecun/mnist"}).dataset
    with pytest.raises(
        DataUnavailableError, match=r"'ylecun/mnist' .*unreachable \(offline\).*save_to_disk"
    ):
        load_dataset(cfg)


def test_text_corpus_is_embedded() -> None:
    cfg = DataConfig.model_validate({"dataset": {"name": "text", "seq_len": 20, "max_chars": 5000}})
    ds = load_dataset(cfg.dataset)
    assert ds.x.dtype == np.int64 and ds.x.shape[1] == 20 and ds.num_classes == 80
    assert ds.x.max() < 80 and ds.x_test is not None and ds.y_test is not None
    # Targets are the inputs shifted by one character, across sequence boundaries too.
    stream_x = np.concatenate([ds.x.ravel(), ds.x_test.ravel()])
    stream_y = np.concatenate([ds.y.ravel(), ds.y_test.ravel()])
    assert np.array_equal(stream_x[1:], stream_y[:-1])
    assert len(ds.x_test) == round(0.1 * (len(ds.x) + len(ds.x_test)))  # the last 10%


def test_contiguous_partitioner_and_sequence_targets() -> None:
    from fedsim.errors import ScenarioError

    cfg = DataConfig.model_validate(
        {
            "dataset": {"name": "text", "max_chars": 8000},
            "num_clients": 3,
            "partitioner": "contiguous",
        }
    )
    fed = federated_data(cfg, 0)
    assert [p[0] for p in fed.parts] == [
        0,
        len(fed.parts[0]),
        len(fed.parts[0]) + len(fed.parts[1]),
    ]
    assert np.array_equal(np.concatenate(fed.parts), np.arange(len(fed.y)))
    bad = DataConfig.model_validate(
        {
            "dataset": {"name": "text", "max_chars": 8000},
            "num_clients": 3,
            "partitioner": "dirichlet",
        }
    )
    with pytest.raises(ScenarioError, match="needs one class label per example"):
        federated_data(bad, 0)
