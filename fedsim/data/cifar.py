"""CIFAR-10/100 from their standard Python batches (Krizhevsky 2009), read safely.

The batches are pickles. A data file must never execute code, so they are read with an
unpickler that can build only what the batches hold (dicts, lists, bytes, numbers and
numpy arrays) and refuses every other global.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedsim.config.schema import CifarDataset
from fedsim.data.arrays import ArrayDataset
from fedsim.data.datasets import DATASETS
from fedsim.errors import DataUnavailableError

# The only globals a CIFAR batch (or numpy's pickling of an array) refers to.
_ALLOWED = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # Python 2 pickles of numpy buffers
    }
)
_LAYOUTS = {  # folder contents: (training batches, test batch)
    "cifar-10": (tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
    "cifar-100": (("train",), "test"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _read_batch(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            raw = _BatchUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataUnavailableError(
            f"data.dataset.path: {path} is not a CIFAR Python batch: {exc}"
        ) from None
    if not isinstance(raw, dict):
        raise DataUnavailableError(f"data.dataset.path: {path} is not a CIFAR batch (a dict)")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in raw.items()}


def _arrays(
    batches: list[dict[str, Any]], label_key: str, path: Path
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    try:
        data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    except KeyError as exc:
        raise DataUnavailableError(f"data.dataset.path: {path}: a batch lacks {exc}") from None
    # Rows are 1024 red, then green, then blue values, row-major: already (C, H, W).
    return data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, labels


@DATASETS.register("cifar", help="CIFAR-10/100 from the Python batches in a local folder")
def load_cifar(cfg: CifarDataset) -> ArrayDataset:
    """Read ``data_batch_1..5``/``test_batch`` (CIFAR-10) or ``train``/``test`` (CIFAR-100)."""
    root = Path(cfg.path).expanduser()
    found = [v for v, (tr, te) in _LAYOUTS.items() if all((root / n).is_file() for n in (*tr, te))]
    if not found:
        raise DataUnavailableError(
            f"data.dataset.path: {root} holds neither CIFAR-10's data_batch_1..5 and "
            "test_batch nor CIFAR-100's train and test (the python versions of the archives)"
        )
    variant = found[0]
    train_names, test_name = _LAYOUTS[variant]
    key = "labels" if variant == "cifar-10" else f"{cfg.labels}_labels"
    x, y = _arrays([_read_batch(root / n) for n in train_names], key, root)
    x_test, y_test = _arrays([_read_batch(root / test_name)], key, root)
    num_classes = {"labels": 10, "fine_labels": 100, "coarse_labels": 20}[key]
    return ArrayDataset(x=x, y=y, x_test=x_test, y_test=y_test, num_classes=num_classes)
