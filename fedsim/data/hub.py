"""Hugging Face datasets: a local copy (``save_to_disk``, parquet, arrow) or a Hub name.

A local copy never touches the network. The Arrow tables stay memory-mapped; features
are copied once, batch by batch, into one preallocated array (never through Python
lists). Images (the ``Image`` feature, or height x width x channel arrays) become
(C, H, W). A Hub name is tried only when the Hub answers within a couple of seconds;
offline (or with ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` set) the loader fails at
once with one line saying how to save the data locally.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from numpy.typing import NDArray

from fedsim.config.schema import HubDataset
from fedsim.data.arrays import ArrayDataset
from fedsim.data.datasets import DATASETS, cache_dir
from fedsim.errors import DataUnavailableError

PROBE_TIMEOUT_S = 2.0  # how long the Hub may take to accept a connection
_BATCH = 1024  # examples converted at a time
_DATA_FILES = (".parquet", ".arrow")
_SAVED_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
_CHANNELS = (1, 3, 4)


def _offline_flag() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def hub_reachable(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the Hub accepts a TCP connection within ``timeout_s`` (name lookup included).

    The lookup runs in a daemon thread: without a network, resolvers can take far longer
    than the connection timeout to give up.
    """
    if _offline_flag():
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout_s).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


def _save_hint(name: str) -> str:
    return (
        'on a machine with network save it locally with: python -c "import datasets; '
        f"datasets.load_dataset('{name}').save_to_disk('DIR')\" and set data.dataset.path: DIR"
    )


def _tokens(path: Path, root: Path) -> set[str]:
    """Folder names and the dash/underscore/dot-separated pieces of the file name."""
    rel = path.relative_to(root) if path != root else Path(path.name)
    return {*rel.parts[:-1], *re.split(r"[-_.]", path.stem)}


def _local_splits(root: Path, wanted: list[str]) -> dict[str, Any]:
    """The wanted splits of a saved dataset, or of parquet/arrow files named by split."""
    import datasets

    if root.is_dir() and any((root / m).is_file() for m in _SAVED_MARKERS):
        saved = datasets.load_from_disk(str(root))  # memory-mapped Arrow
        return dict(saved) if isinstance(saved, datasets.DatasetDict) else {wanted[0]: saved}
    if root.is_file():
        files = {wanted[0]: [root]}  # one file: the training split
    else:
        found = sorted(p for p in root.rglob("*") if p.suffix in _DATA_FILES)
        files = {s: [p for p in found if s in _tokens(p, root)] for s in wanted}
    splits = {}
    for split, paths in files.items():
        if not paths:
            continue
        if all(p.suffix == ".arrow" for p in paths):
            parts = [datasets.Dataset.from_file(str(p)) for p in paths]
            splits[split] = datasets.concatenate_datasets(parts)
        else:  # parquet is converted once to a memory-mapped Arrow cache
            cache = str(cache_dir() / "hf")
            splits[split] = datasets.Dataset.from_parquet([str(p) for p in paths], cache_dir=cache)
    return splits


def _hub_splits(name: str) -> dict[str, Any]:
    if not hub_reachable():
        raise DataUnavailableError(
            f"data.dataset.path: '{name}' is not a local path and the Hugging Face Hub is "
            f"unreachable (offline); {_save_hint(name)}"
        )
    import datasets

    try:
        return dict(datasets.load_dataset(name))
    except Exception as exc:  # the Hub raises many types; all mean "not available"
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataUnavailableError(
            f"data.dataset.path: cannot load '{name}' from the Hub: {type(exc).__name__}: "
            f"{first}; {_save_hint(name)}"
        ) from None


def _features(split: Any, key: str) -> NDArray[Any]:
    """The feature column as one array, filled batch by batch; images as (C, H, W).

    ``Image`` features decode to (H, W) or (H, W, C): always moved to (C, H, W). Other
    4-D arrays are moved when only their last axis is channel-sized (1, 3 or 4). Pixels
    (uint8 values, or integer arrays of 2 or more axes per example: parquet stores
    nested lists of pixels as int64) are scaled to [0, 1]; integer sequences (one axis
    per example: token ids) stay integers.
    """
    import datasets

    is_image = isinstance(split.features[key], datasets.Image)
    column = split.select_columns([key]).with_format("numpy")
    out: NDArray[Any] | None = None
    pixels = is_image
    for start, batch in zip(
        range(0, len(split), _BATCH), column.iter(batch_size=_BATCH), strict=True
    ):
        values = np.asarray(batch[key])
        if values.dtype == object:
            raise DataUnavailableError(
                f"data.dataset.image_key: column '{key}' holds examples of different shapes"
            )
        if out is None:
            integer_image = np.issubdtype(values.dtype, np.integer) and values.ndim >= 3
            pixels = pixels or values.dtype == np.uint8 or integer_image
            integer = np.issubdtype(values.dtype, np.integer) and not pixels
            out = np.empty((len(split), *values.shape[1:]), np.int64 if integer else np.float32)
        out[start : start + len(values)] = values
    if out is None:
        raise DataUnavailableError(f"data.dataset.path: split with no examples (column '{key}')")
    if is_image and out.ndim == 3:  # (N, H, W) grey images get a channel axis
        out = out[:, None]
    elif out.ndim == 4 and (is_image or _channels_last(out.shape)):
        out = np.ascontiguousarray(out.transpose(0, 3, 1, 2))
    if pixels:
        out /= 255.0
    return out


def _channels_last(shape: tuple[int, ...]) -> bool:
    """(N, H, W, C) rather than (N, C, H, W): a channel-sized last axis only."""
    return shape[-1] in _CHANNELS and shape[1] not in _CHANNELS


def _column(split: Any, key: str, what: str) -> NDArray[Any]:
    if key not in split.column_names:
        raise DataUnavailableError(
            f"data.dataset.{what}: no column '{key}' (columns: {', '.join(split.column_names)})"
        )
    return np.asarray(split.select_columns([key]).with_format("numpy")[key])


def _num_classes(split: Any, cfg: HubDataset, labels: list[NDArray[np.int64]]) -> int:
    names = getattr(split.features[cfg.label_key], "names", None)
    return len(names) if names else int(max(int(y.max()) for y in labels if len(y))) + 1


@DATASETS.register("hf", help="Hugging Face dataset: local save_to_disk/parquet/arrow or Hub")
def load_hub(cfg: HubDataset) -> ArrayDataset:
    """Load the configured splits and columns (see the module docstring)."""
    local = Path(cfg.path).expanduser()
    wanted = [cfg.train_split] + ([cfg.test_split] if cfg.test_split else [])
    if local.exists():
        splits = _local_splits(local, wanted)
    elif cfg.path.startswith(("/", ".", "~")) or cfg.path.endswith(_DATA_FILES):
        raise DataUnavailableError(f"data.dataset.path: not found: {local}")
    else:
        splits = _hub_splits(cfg.path)
    missing = [s for s in wanted if s not in splits]
    if missing:
        raise DataUnavailableError(
            f"data.dataset.{'train_split' if cfg.train_split in missing else 'test_split'}: "
            f"no split {missing[0]!r} in {cfg.path} (splits: {', '.join(sorted(splits))})"
        )
    train, test = splits[cfg.train_split], splits[cfg.test_split] if cfg.test_split else None
    _column(train, cfg.image_key, "image_key")  # a missing feature column, named
    y = _column(train, cfg.label_key, "label_key").astype(np.int64)
    y_test = None if test is None else _column(test, cfg.label_key, "label_key").astype(np.int64)
    ids = ids_test = None
    if cfg.client_id_key is not None:
        ids = _column(train, cfg.client_id_key, "client_id_key")
        if test is not None and cfg.client_id_key in test.column_names:
            ids_test = _column(test, cfg.client_id_key, "client_id_key")
    return ArrayDataset(
        x=_features(train, cfg.image_key),
        y=y,
        x_test=None if test is None else _features(test, cfg.image_key),
        y_test=y_test,
        num_classes=_num_classes(train, cfg, [y] + ([] if y_test is None else [y_test])),
        client_id=ids,
        client_id_test=ids_test,
    )
