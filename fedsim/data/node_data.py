"""One node's training data: its partition of the scenario's dataset, or a local file.

A simulated node computes its partition from the scenario (``partition-id`` of
``num-partitions``: the split is deterministic, so every process computes the same
one). A deployed device may instead hold its own examples in a local ``.npz`` file
named by the node config's ``data-path``; :func:`write_partitions` writes those files
from a scenario, one per partition, for copying onto the devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedsim import wire
from fedsim.config.schema import DataConfig, has_regression_targets
from fedsim.data.federated import federated_data
from fedsim.data.moments import moment_plan
from fedsim.data.npz_file import read_npz
from fedsim.data.sharing import sharing_plan
from fedsim.errors import DataUnavailableError


@dataclass(frozen=True)
class NodeData:
    """The training examples of one node and what a model needs to know about them.

    Attributes
    ----------
    x, y : ndarray
        The node's examples (float32 features, or int64 token ids) and labels.
    num_classes : int
        Number of classes of the whole task (not only those this node holds).
    holders : ndarray, optional
        With ``data.sharing`` (AGC's offline phase): how many clients hold each example
        (1: private; ``d``: non-private, received or its own). None: all private.
    global_label_counts : ndarray, optional
        How many training labels of each class all clients hold together: the global
        label prior of ``client.loss: {name: logit_adjusted, prior: global}``. Computed
        from the scenario's split (a statistic of the whole federation, which this
        simulation takes as public, as FedLC-style methods do); a deployed device reads
        it from its partition file. None where the file lacks it.
    moments : ndarray, optional
        With ``data.moment_encoding``: the node's coded block ``[A_j | c_j]`` of the
        second moment, shape (r, p + 1) (:mod:`fedsim.data.moments`).
    """

    x: NDArray[Any]
    y: NDArray[np.int64]
    num_classes: int
    holders: NDArray[np.int64] | None = None
    global_label_counts: NDArray[np.int64] | None = None
    moments: NDArray[np.float64] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return tuple(int(d) for d in self.x.shape[1:])


def partition_file(out_dir: Path, partition_id: int) -> Path:
    """Path of partition ``partition_id``'s file in a :func:`write_partitions` folder."""
    return out_dir / f"partition-{partition_id}.npz"


def write_partitions(cfg: DataConfig, seed: int, out_dir: Path) -> list[Path]:
    """Write every node's data as ``partition-<k>.npz``.

    Each holds ``x``, ``y``, ``num_classes``, ``label_counts`` (the global prior's
    counts) and, with ``data.sharing``, ``holders``. With ``data.sharing`` a file holds
    what the node holds after the offline phase: its private examples, the non-private
    ones it shares or received. With ``data.label_noise`` ``y`` holds the noisy labels
    the node trains on.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(cfg.num_clients):
        node = node_data(cfg, seed, k, None)
        path = partition_file(out_dir, k)
        arrays: dict[str, Any] = {"x": node.x, "y": node.y, "num_classes": node.num_classes}
        if node.global_label_counts is not None:
            arrays["label_counts"] = node.global_label_counts
        if node.moments is not None:
            arrays["moments"] = node.moments
        if node.holders is not None:
            arrays["holders"] = node.holders
        np.savez(path, **arrays)
        paths.append(path)
    return paths


def node_data(cfg: DataConfig, seed: int, partition_id: int, data_path: str | None) -> NodeData:
    """Return a node's examples: from ``data_path`` if given, else its scenario partition.

    With ``data.sharing`` the partition is what the node holds after AGC's offline phase
    (:mod:`fedsim.data.sharing`).
    """
    if data_path:
        return _read_file(Path(data_path).expanduser(), cfg, seed)
    data = federated_data(cfg, seed)
    regression = data.y.dtype.kind == "f"
    counts = None if regression else data.global_label_counts
    if cfg.moment_encoding is not None:
        x, y = data.client_arrays(partition_id)
        block = moment_plan(cfg, seed).blocks[partition_id]
        return NodeData(x, y, data.num_classes, moments=block)
    if cfg.sharing is None:
        x, y = data.client_arrays(partition_id)
        return NodeData(x, y, data.num_classes, global_label_counts=counts)
    idx, holders = sharing_plan(cfg, seed).held(partition_id)
    return NodeData(data.x[idx], data.y[idx], data.num_classes, holders, counts)


def _read_file(path: Path, cfg: DataConfig, seed: int) -> NodeData:
    """Read a node's ``.npz`` (arrays ``x``, ``y``, optionally ``num_classes``)."""
    where = f"node config {wire.DATA_PATH}"
    optional = ("num_classes", "holders", "label_counts", "moments")
    values = has_regression_targets(cfg.dataset)
    arrays = read_npz(path, where, optional, whole_dataset=False, values=values)
    moments = arrays.get("moments")
    if moments is not None and (
        moments.ndim != 2 or moments.dtype.kind != "f" or not np.isfinite(moments).all()
    ):
        raise DataUnavailableError(f"{where}: {path}: 'moments' must be a finite 2-D float array")
    # x keeps its dtype: token ids stay ints. Without the count, the scenario's dataset
    # says how wide the model's output is.
    x, y = arrays["x"], arrays["y"]
    holders = arrays["holders"].astype(np.int64) if "holders" in arrays else None
    if holders is not None and (holders.shape != y.shape[:1] or (holders < 1).any()):
        raise DataUnavailableError(f"{where}: {path}: 'holders' must be >= 1, one per example")
    counts = arrays.get("label_counts")
    bad = counts is not None and (counts.ndim != 1 or counts.dtype.kind not in "iu")
    if bad or (counts is not None and (counts < 0).any()):
        raise DataUnavailableError(f"{where}: {path}: 'label_counts' must be integer counts")
    counts = None if counts is None else counts.astype(np.int64)
    if "num_classes" in arrays:
        return NodeData(x, y, int(arrays["num_classes"]), holders, counts, moments)
    num_classes = federated_data(cfg, seed).num_classes
    if y.size and int(y.max()) >= num_classes:
        raise DataUnavailableError(
            f"{where}: {path}: label {int(y.max())} is out of range for the dataset's "
            f"{num_classes} classes"
        )
    return NodeData(x, y, num_classes, holders, counts, moments)
