"""One run's data: the training arrays split over clients plus a central test set."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
from numpy.typing import NDArray

from fedsim.config.schema import DataConfig, DatasetConfig
from fedsim.data.arrays import ArrayDataset
from fedsim.data.datasets import load_dataset
from fedsim.data.label_noise import noisy_labels
from fedsim.data.natural import chosen_ids, group_by_id
from fedsim.data.partitioners import BY_CLIENT_ID, partition
from fedsim.label_prior import label_counts

# The held-out test split is drawn with a fixed seed so that every run seed and every
# variant of a comparison is scored on the same examples.
TEST_SPLIT_SEED = 20240401

_lock = threading.Lock()


@dataclass(frozen=True)
class FederatedData:
    """Training data split over clients, and the central test set.

    Attributes
    ----------
    x, y : ndarray
        All training examples.
    parts : list of ndarray
        ``parts[k]`` holds the indices into ``x``/``y`` of client ``k``'s examples.
    x_test, y_test : ndarray
        The held-out central test set.
    num_classes : int
        Number of classes.
    test_parts : list of ndarray or None
        ``test_parts[k]`` holds the indices into ``x_test``/``y_test`` of client ``k``'s
        own test examples (natural partitions of data with per-example test ids).
    y_true : ndarray or None
        With ``data.label_noise``: the training labels before the noise (``y`` holds
        the noisy ones every client trains on). None without noise.
    """

    x: NDArray[np.float32]
    y: NDArray[np.int64]
    parts: list[NDArray[np.int64]]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]
    num_classes: int
    test_parts: list[NDArray[np.int64]] | None = None
    y_true: NDArray[np.int64] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return tuple(int(d) for d in self.x.shape[1:])

    @property
    def num_clients(self) -> int:
        """Number of partitions."""
        return len(self.parts)

    @cached_property
    def global_label_counts(self) -> NDArray[np.int64]:
        """Count each class's training targets over all clients (the global prior).

        Under ``data.label_noise`` these are the noisy labels the clients train on.
        Counted once (every node's data carries them, and nodes are resolved per job).
        """
        counts = label_counts(self.y, self.num_classes)
        counts.flags.writeable = False  # shared by every node
        return counts

    def client_arrays(self, partition_id: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Return client ``partition_id``'s features and labels."""
        idx = self.parts[partition_id]
        return self.x[idx], self.y[idx]


def _split_test(ds: ArrayDataset, test_fraction: float) -> ArrayDataset:
    """Carve a test split out of the training arrays when the dataset has none."""
    if ds.x_test is not None and ds.y_test is not None:
        return ds
    order = np.random.default_rng(TEST_SPLIT_SEED).permutation(len(ds.y))
    n_test = max(1, round(test_fraction * len(ds.y)))
    test, train = order[:n_test], np.sort(order[n_test:])
    ids = ds.client_id  # carved with the examples, so every client keeps a test share
    return ArrayDataset(
        x=ds.x[train],
        y=ds.y[train],
        x_test=ds.x[test],
        y_test=ds.y[test],
        num_classes=ds.num_classes,
        client_id=None if ids is None else ids[train],
        client_id_test=None if ids is None else ids[test],
    )


# Frozen pydantic sections hash by value, so they key the caches directly.
@lru_cache(maxsize=8)
def _dataset(dataset: DatasetConfig, test_fraction: float) -> ArrayDataset:
    return _split_test(load_dataset(dataset), test_fraction)


@lru_cache(maxsize=8)
def _federated(cfg: DataConfig, seed: int) -> FederatedData:
    ds = _dataset(cfg.dataset, cfg.test_fraction)
    parts = partition(cfg.partitioner, ds.y, cfg.num_clients, seed, ds.client_id)
    assert ds.x_test is not None and ds.y_test is not None  # _split_test guarantees both
    test_parts = None
    ids, ids_test = ds.client_id, ds.client_id_test
    if cfg.partitioner.name in BY_CLIENT_ID and ids is not None and ids_test is not None:
        test_parts = group_by_id(ids_test, chosen_ids(ids, cfg.num_clients, seed))
    # Noise after the partition: label-driven splits see the true labels, and the split
    # is the same with and without noise. Test labels are never noisy.
    noise = cfg.label_noise
    y = ds.y if noise is None else noisy_labels(ds.y, ds.num_classes, noise, seed)
    return FederatedData(
        x=ds.x,
        y=y,
        parts=parts,
        x_test=ds.x_test,
        y_test=ds.y_test,
        num_classes=ds.num_classes,
        test_parts=test_parts,
        y_true=None if noise is None else ds.y,
    )


def count_client_ids(dataset: DatasetConfig, test_fraction: float) -> int:
    """Number of distinct natural ids among a dataset's training examples (0 if none).

    Scenario loading uses it for ``data.num_clients`` when a natural partition leaves
    it unset; the loaded dataset stays cached for the run.
    """
    with _lock:
        ids = _dataset(dataset, test_fraction).client_id
    return 0 if ids is None else len(np.unique(ids))


def federated_data(cfg: DataConfig, seed: int) -> FederatedData:
    """Return the run's federated data, computed once per process per (data, seed).

    Every client of an in-process run and the server's evaluation share one copy; the
    partition depends only on the ``data`` section and the seed, so a deployed node
    that computes it alone gets the same partition.
    """
    with _lock:  # worker threads must not partition the same data twice
        return _federated(cfg, seed)
