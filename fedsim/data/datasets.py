"""Dataset loaders, by registry name.

``digits`` and ``mnist1d`` need no network. ``npz`` reads a local file. The loaders of
other formats live in their own modules (``hf`` in :mod:`fedsim.data.hub`, ``leaf``,
``cifar``) and register here on import.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.config.schema import DigitsDataset, Mnist1dDataset, NpzDataset, TextDataset
from fedsim.data.arrays import ArrayDataset
from fedsim.data.client_ids import npz_client_ids
from fedsim.data.npz_file import read_npz
from fedsim.errors import DataUnavailableError
from fedsim.registry import Registry

Loader = Callable[[Any], ArrayDataset]
DATASETS: Registry[Loader] = Registry("datasets")


def cache_dir() -> Path:
    """Return the directory for generated datasets (``$FEDSIM_CACHE_DIR`` or ``~/.cache``)."""
    root = os.environ.get("FEDSIM_CACHE_DIR") or Path.home() / ".cache" / "fedsim"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@DATASETS.register("digits", help="scikit-learn handwritten digits, 1,797 8x8 images, offline")
def load_digits(cfg: DigitsDataset) -> ArrayDataset:
    """Load scikit-learn's digits as (N, 1, 8, 8) images scaled to [0, 1].

    Cached as ``.npz``: a deployed ClientApp is a fresh process per message, and
    importing scikit-learn costs it seconds of CPU every time.
    """
    path = cache_dir() / "digits.npz"
    if not path.exists():
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        _save_atomic(path, x=bunch.images.astype(np.float32) / 16.0, y=bunch.target)
    with np.load(path) as f:
        x = f["x"].astype(np.float32)[:, None, :, :]
        return ArrayDataset(x=x, y=f["y"].astype(np.int64), num_classes=10)


def _save_atomic(path: Path, **arrays: Any) -> None:
    """Write ``.npz`` through a temporary file: concurrent runs never read half a file."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


@DATASETS.register("mnist1d", help="MNIST-1D generated locally (40-step sequences), offline")
def load_mnist1d(cfg: Mnist1dDataset) -> ArrayDataset:
    """Generate MNIST-1D with ``cfg.num_samples`` samples, cached as ``.npz``."""
    path = cache_dir() / f"mnist1d-{cfg.num_samples}.npz"
    if not path.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples = cfg.num_samples
        data = make_dataset(args)
        _save_atomic(path, x=data["x"], y=data["y"], x_test=data["x_test"], y_test=data["y_test"])
    with np.load(path) as f:
        return ArrayDataset(
            x=f["x"].astype(np.float32),
            y=f["y"].astype(np.int64),
            x_test=f["x_test"].astype(np.float32),
            y_test=f["y_test"].astype(np.int64),
            num_classes=10,
        )


@DATASETS.register("text", help="character-level text of Python's reference docs, offline")
def load_text(cfg: TextDataset) -> ArrayDataset:
    """Next-character sequences from ``pydoc_data.topics`` (ships with CPython)."""
    from collections import Counter
    from pydoc_data.topics import topics

    text = "".join(topics[k] for k in sorted(topics))[: cfg.max_chars]
    # Vocabulary: id 0 is "unknown", then the 79 most frequent characters.
    ranked = [ch for ch, _ in sorted(Counter(text).items(), key=lambda kv: (-kv[1], kv[0]))]
    index = {ch: i + 1 for i, ch in enumerate(ranked[:79])}
    ids = np.fromiter((index.get(ch, 0) for ch in text), dtype=np.int64, count=len(text))
    n = (len(ids) - 1) // cfg.seq_len
    if n < 4:
        raise DataUnavailableError(
            f"data.dataset.max_chars: too few characters for seq_len {cfg.seq_len}"
        )
    x = ids[: n * cfg.seq_len].reshape(n, cfg.seq_len)
    y = ids[1 : n * cfg.seq_len + 1].reshape(n, cfg.seq_len)
    n_test = max(1, round(cfg.test_fraction * n))
    return ArrayDataset(
        x=x[:-n_test], y=y[:-n_test], x_test=x[-n_test:], y_test=y[-n_test:], num_classes=80
    )


@DATASETS.register(
    "npz", help="local .npz: x, y (optionally x_test, y_test, client_id, client_id_test)"
)
def load_npz(cfg: NpzDataset) -> ArrayDataset:
    """Load a local ``.npz`` file (checked by :func:`fedsim.data.npz_file.read_npz`)."""
    path = Path(cfg.path).expanduser()
    values = cfg.targets == "values"
    arrays = read_npz(path, "data.dataset.path", ("x_test", "y_test"), values=values)
    y, y_test = arrays["y"], arrays.get("y_test")
    # Regression targets: one model output.
    num_classes = 1 if values else int(max(y.max(), -1 if y_test is None else y_test.max())) + 1
    x_test = arrays.get("x_test")
    with np.load(path, allow_pickle=False) as f:  # lazy: reads only the id arrays
        ids = npz_client_ids(f, path, len(y), None if y_test is None else len(y_test))
    return ArrayDataset(
        # copy=False: a float32 file's arrays are not copied a second time.
        x=arrays["x"].astype(np.float32, copy=False),
        y=y,
        x_test=None if x_test is None else x_test.astype(np.float32, copy=False),
        y_test=y_test,
        num_classes=num_classes,
        **ids,
    )


def load_dataset(cfg: Any) -> ArrayDataset:
    """Load the dataset a ``data.dataset`` section names."""
    return DATASETS.get(cfg.name)(cfg)


# Loaders defined in their own modules register themselves on import.
from fedsim.data import cifar, hub, leaf, regression  # noqa: E402, F401
