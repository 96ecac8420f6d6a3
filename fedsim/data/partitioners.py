"""Partitioners: labels to per-client index arrays, by registry name.

The label-based ones delegate to flwr-datasets on an in-memory ``datasets.Dataset``
that holds only an index column and the labels, so the features never get copied.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedsim.config.schema import (
    ContiguousPartitioner,
    DirichletPartitioner,
    IidPartitioner,
    OneClassPartitioner,
    PathologicalPartitioner,
    ShardsPartitioner,
)
from fedsim.errors import Problem, ScenarioError
from fedsim.registry import Registry

Indices = list[NDArray[np.int64]]
# Partitioners that never look at the labels (so sequence targets are fine).
LABEL_FREE = frozenset({"iid", "contiguous", "natural"})
# Partitioners that group by a per-example client id instead of reading the labels.
BY_CLIENT_ID = frozenset({"natural"})
PartitionFn = Callable[[Any, NDArray[np.int64], int, int], Indices]
PARTITIONERS: Registry[PartitionFn] = Registry("partitioners")


def _with_flwr_datasets(partitioner: Any, labels: NDArray[np.int64], num_clients: int) -> Indices:
    """Run a flwr-datasets partitioner over the labels and read back sample indices."""
    from datasets import Dataset

    ds = Dataset.from_dict({"idx": np.arange(len(labels)), "label": labels})
    partitioner.dataset = ds
    return [
        np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64) for i in range(num_clients)
    ]


def _fail(key: str, message: str) -> ScenarioError:
    return ScenarioError([Problem(f"data.partitioner.{key}", message)])


@PARTITIONERS.register("iid", help="uniformly random equal-sized partitions")
def iid(cfg: IidPartitioner, labels: NDArray[np.int64], num_clients: int, seed: int) -> Indices:
    """Shuffle and cut into ``num_clients`` nearly equal parts."""
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_clients)]


@PARTITIONERS.register("dirichlet", help="label proportions ~ Dirichlet(alpha) per client")
def dirichlet(
    cfg: DirichletPartitioner, labels: NDArray[np.int64], num_clients: int, seed: int
) -> Indices:
    """Latent-Dirichlet label skew (flwr-datasets ``DirichletPartitioner``)."""
    from flwr_datasets.partitioner import DirichletPartitioner as Impl

    if cfg.min_partition_size * num_clients > len(labels):
        raise _fail(
            "min_partition_size",
            f"{num_clients} clients x {cfg.min_partition_size} "
            f"exceeds the {len(labels)} training samples",
        )
    impl = Impl(
        num_clients, "label", cfg.alpha, cfg.min_partition_size, cfg.self_balancing, seed=seed
    )
    try:
        return _with_flwr_datasets(impl, labels, num_clients)
    except ValueError as exc:  # raised after 10 failed resampling attempts
        raise _fail("min_partition_size", f"cannot be met with alpha={cfg.alpha}: {exc}") from None


@PARTITIONERS.register("pathological", help="each client holds `classes_per_client` classes")
def pathological(
    cfg: PathologicalPartitioner, labels: NDArray[np.int64], num_clients: int, seed: int
) -> Indices:
    """Fixed number of classes per client (flwr-datasets ``PathologicalPartitioner``)."""
    from flwr_datasets.partitioner import PathologicalPartitioner as Impl

    num_classes = len(np.unique(labels))
    if cfg.classes_per_client > num_classes:
        raise _fail("classes_per_client", f"must be <= the {num_classes} classes in the data")
    impl = Impl(num_clients, "label", cfg.classes_per_client, cfg.class_assignment, seed=seed)
    with warnings.catch_warnings():  # fedsim reports dropped classes itself (uncovered_classes)
        warnings.simplefilter("ignore", UserWarning)
        return _with_flwr_datasets(impl, labels, num_clients)


@PARTITIONERS.register("shards", help="sorted-label shards dealt to clients (McMahan et al.)")
def shards(
    cfg: ShardsPartitioner, labels: NDArray[np.int64], num_clients: int, seed: int
) -> Indices:
    """Sort by label, cut shards, deal (flwr-datasets ``ShardPartitioner``)."""
    from flwr_datasets.partitioner import ShardPartitioner as Impl

    if num_clients * cfg.shards_per_client > len(labels):
        raise _fail("shards_per_client", "more shards than training samples")
    impl = Impl(num_clients, "label", num_shards_per_partition=cfg.shards_per_client, seed=seed)
    return _with_flwr_datasets(impl, labels, num_clients)


@PARTITIONERS.register("contiguous", help="contiguous blocks in dataset order (text shards)")
def contiguous(
    cfg: ContiguousPartitioner, labels: NDArray[np.int64], num_clients: int, seed: int
) -> Indices:
    """Client k gets the k-th of ``num_clients`` nearly equal contiguous blocks."""
    return [part.astype(np.int64) for part in np.array_split(np.arange(len(labels)), num_clients)]


@PARTITIONERS.register("one-class", help="each client holds exactly one label")
def one_class(
    cfg: OneClassPartitioner, labels: NDArray[np.int64], num_clients: int, seed: int
) -> Indices:
    """Client k gets label ``k mod C``; clients sharing a label split its samples."""
    classes = np.unique(labels)
    if num_clients < len(classes):
        raise ScenarioError(
            [
                Problem(
                    "data.num_clients",
                    f"one-class needs at least one client "
                    f"per class ({len(classes)} classes), got {num_clients}",
                )
            ]
        )
    rng = np.random.default_rng(seed)
    owners: dict[int, list[int]] = {int(c): [] for c in classes}
    for k in range(num_clients):
        owners[int(classes[k % len(classes)])].append(k)
    parts: Indices = [np.empty(0, dtype=np.int64)] * num_clients
    for c, ks in owners.items():
        idx = rng.permutation(np.flatnonzero(labels == c))
        for k, chunk in zip(ks, np.array_split(idx, len(ks)), strict=True):
            parts[k] = np.sort(chunk).astype(np.int64)
    return parts


def partition(
    cfg: Any,
    labels: NDArray[np.int64],
    num_clients: int,
    seed: int,
    client_ids: NDArray[Any] | None = None,
) -> Indices:
    """Split sample indices over clients as the ``data.partitioner`` section says.

    ``client_ids`` (one natural id per example, where the dataset has them) is what
    the partitioners in :data:`BY_CLIENT_ID` group by.
    """
    if cfg.name in BY_CLIENT_ID:
        if client_ids is None:
            raise ScenarioError(
                [
                    Problem(
                        "data.partitioner.name",
                        f"'{cfg.name}' needs a per-example client id, which this dataset "
                        "lacks (an npz array 'client_id', or the leaf loader)",
                    )
                ]
            )
        labels = client_ids
    if (labels.ndim > 1 or labels.dtype.kind == "f") and cfg.name not in LABEL_FREE:
        raise ScenarioError(
            [
                Problem(
                    "data.partitioner.name",
                    f"'{cfg.name}' needs one class label per example; use one of "
                    f"{sorted(LABEL_FREE)} for sequence or regression targets",
                )
            ]
        )
    parts = PARTITIONERS.get(cfg.name)(cfg, labels, num_clients, seed)
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ScenarioError(
            [
                Problem(
                    "data.num_clients",
                    f"{len(empty)} of {num_clients} clients "
                    "received no data; use fewer clients or another partitioner",
                )
            ]
        )
    return parts


def uncovered_classes(labels: NDArray[np.int64], parts: Indices) -> list[int]:
    """Classes present in ``labels`` that no partition holds (empty for sequence targets).

    Such classes are unlearnable by every client, so a run caps its test accuracy at
    the share of the test set the covered classes make up.
    """
    if labels.ndim != 1 or not parts:
        return []
    held = {int(c) for c in np.unique(labels[np.concatenate(parts)])}
    return sorted({int(c) for c in np.unique(labels)} - held)


def coverage_problem(
    cfg: Any, labels: NDArray[np.int64], parts: Indices, seed: int
) -> Problem | None:
    """The ``data.partitioner`` problem of a split that gives some class to no client."""
    missing = uncovered_classes(labels, parts)
    if not missing:
        return None
    return Problem(
        "data.partitioner",
        f"classes {missing} of the data reach no client ('{cfg.name}', seed {seed}): "
        "the test examples of those classes cannot be learnt",
    )


# Partitioners defined in their own modules register themselves on import.
from fedsim.data import natural  # noqa: E402, F401
