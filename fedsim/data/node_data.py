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
from fedsim.data.federated import federated_data
from fedsim.data.npz_file import read_npz
from fedsim.errors import DataUnavailableError
from fedsim.scenario import DataConfig


@dataclass(frozen=True)
class NodeData:
    """The training examples of one node and what a model needs to know about them.

    Attributes
    ----------
    x, y : ndarray
        The node's examples (float32 features, or int64 token ids) and labels.
    num_classes : int
        Number of classes of the whole task (not only those this node holds).
    """

    x: NDArray[Any]
    y: NDArray[np.int64]
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return tuple(int(d) for d in self.x.shape[1:])


def partition_file(out_dir: Path, partition_id: int) -> Path:
    """Path of partition ``partition_id``'s file in a :func:`write_partitions` folder."""
    return out_dir / f"partition-{partition_id}.npz"


def write_partitions(cfg: DataConfig, seed: int, out_dir: Path) -> list[Path]:
    """Write every partition of a scenario's data as ``partition-<k>.npz`` (x, y, num_classes)."""
    data = federated_data(cfg, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(data.num_clients):
        x, y = data.client_arrays(k)
        path = partition_file(out_dir, k)
        np.savez(path, x=x, y=y, num_classes=np.int64(data.num_classes))
        paths.append(path)
    return paths


def node_data(cfg: DataConfig, seed: int, partition_id: int, data_path: str | None) -> NodeData:
    """Return a node's examples: from ``data_path`` if given, else its scenario partition."""
    if data_path:
        return _read_file(Path(data_path).expanduser(), cfg, seed)
    data = federated_data(cfg, seed)
    x, y = data.client_arrays(partition_id)
    return NodeData(x, y, data.num_classes)


def _read_file(path: Path, cfg: DataConfig, seed: int) -> NodeData:
    """Read a node's ``.npz`` (arrays ``x``, ``y``, optionally ``num_classes``)."""
    where = f"node config {wire.DATA_PATH}"
    arrays = read_npz(path, where, ("num_classes",), whole_dataset=False)
    # x keeps its dtype: token ids stay ints. Without the count, the scenario's dataset
    # says how wide the model's output is.
    x, y = arrays["x"], arrays["y"]
    if "num_classes" in arrays:
        return NodeData(x, y, int(arrays["num_classes"]))
    num_classes = federated_data(cfg, seed).num_classes
    if y.size and int(y.max()) >= num_classes:
        raise DataUnavailableError(
            f"{where}: {path}: label {int(y.max())} is out of range for the dataset's "
            f"{num_classes} classes"
        )
    return NodeData(x, y, num_classes)
