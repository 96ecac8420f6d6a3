"""Reading a user's ``.npz`` data file, refusing anything it should not hold.

A data file is input like any other: rows of ``x`` without labels, NaN features, a
stray label of 10⁶ (a 1,000,001-class model), text or Python objects where numbers
belong. Each is a one-line :class:`~fedsim.errors.DataUnavailableError` that names
where the file came from (the scenario key, or the node config), found before anything
trains. Files are read without pickle, so loading never runs code.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedsim.data.arrays import ArrayDataset
from fedsim.errors import DataUnavailableError

# Real data compresses a few times, rarely 100x; a file expanding more than this past
# the floor is built to exhaust memory (a few MB of deflated zeros become gigabytes).
MAX_EXPANSION = 200
BOMB_FLOOR_BYTES = 256 * 2**20
NUMBER_KINDS = "biuf"  # numpy dtype kinds accepted as features
LABEL_KINDS = "iu"  # ... and as labels (integral floats too, see _labels)
Fail = Callable[[str], DataUnavailableError]


def read_npz(
    path: Path,
    where: str,
    optional: tuple[str, ...] = (),
    *,
    whole_dataset: bool = True,
    values: bool = False,
) -> dict[str, NDArray[Any]]:
    """Return the checked arrays ``x``, ``y`` and those of ``optional`` the file has.

    ``x_test`` and ``y_test`` come as a pair with ``x_test`` as wide as ``x``; labels are
    integers ``0..C-1`` (``C`` is ``num_classes`` where the file stores it).

    Parameters
    ----------
    path : Path
        The file.
    where : str
        Where the path came from (``data.dataset.path``), the start of every message.
    optional : tuple of str
        Arrays besides ``x`` and ``y`` to return when present.
    whole_dataset : bool
        True for a dataset (its labels are what says how many classes there are);
        False for one node's share, which may hold a few classes only: the caller
        checks its labels against the dataset's class count.
    values : bool
        True: ``y`` and ``y_test`` are real regression targets (one finite float per
        example, returned as float32) instead of labels.

    Raises
    ------
    DataUnavailableError
        On the first problem found.
    """

    def fail(message: str) -> DataUnavailableError:
        return DataUnavailableError(f"{where}: {path}: {message}")

    if not path.is_file():
        raise DataUnavailableError(f"{where}: file not found: {path}")
    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        raise fail("not a .npz file (numpy.savez writes one)")
    _check_sizes(path, ("x", "y", *optional), fail)
    arrays: dict[str, NDArray[Any]] = {}
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = {"x", "y"} - set(f.files)
            if missing:
                raise fail(f"lacks arrays {sorted(missing)} (has {f.files})")
            for name in ("x", "y", *optional):
                if name in f.files:
                    arrays[name] = _array(f, name, fail)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise fail(f"cannot be read as .npz ({type(exc).__name__})") from None
    _check(arrays, fail, whole_dataset, values)
    return arrays


def _available_memory() -> int:
    """Bytes of memory this host has free now (its total if that is not known)."""
    try:
        import psutil  # comes with Flower's dependencies

        return int(psutil.virtual_memory().available)
    except ImportError:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _check_sizes(path: Path, names: tuple[str, ...], fail: Fail) -> None:
    """Refuse a file whose arrays would decompress past free memory, or like a zip bomb.

    Sizes come from the zip directory (nothing is decompressed): the arrays to be read
    may need at most half the free memory (the loaders copy them once more), and a file
    may not expand more than :data:`MAX_EXPANSION` times past :data:`BOMB_FLOOR_BYTES`.
    """
    wanted = {f"{n}.npy" for n in names}
    try:
        with zipfile.ZipFile(path) as z:
            total = sum(i.file_size for i in z.infolist() if i.filename in wanted)
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise fail(f"cannot be read as .npz ({type(exc).__name__})") from None
    size = path.stat().st_size
    if total > BOMB_FLOOR_BYTES and total > MAX_EXPANSION * size:
        raise fail(
            f"its arrays decompress to {total / 2**30:.3g} GiB from {size / 2**20:.3g} MiB "
            f"(over {MAX_EXPANSION}x: not data); store them uncompressed or smaller"
        )
    free = _available_memory()
    if total > free // 2:
        raise fail(
            f"its arrays need {total / 2**30:.3g} GiB decompressed; this host has "
            f"{free / 2**30:.3g} GiB free"
        )


def check_loaded(ds: ArrayDataset, where: str, *, num_classes: int | None = None) -> None:
    """Hold a dataset from another reader (LEAF, Hugging Face) to a data file's rules.

    Non-finite features, labels that are not integers ``0..C-1`` and a stray label that
    would build a model of mostly unused classes are refused as in :func:`read_npz`.
    ``num_classes`` is the class count the data declares (LEAF's task, a Hugging Face
    ``ClassLabel``); without one the labels themselves are checked for plausibility.

    Raises
    ------
    DataUnavailableError
        On the first problem found, starting with ``where``.
    """

    def fail(message: str) -> DataUnavailableError:
        return DataUnavailableError(f"{where}: {message}")

    arrays: dict[str, NDArray[Any]] = {"x": ds.x, "y": ds.y}
    if ds.x_test is not None and ds.y_test is not None:
        arrays.update(x_test=ds.x_test, y_test=ds.y_test)
    if num_classes is not None:
        arrays["num_classes"] = np.asarray(num_classes)
    _check(arrays, fail, True, False)


def _array(f: Any, name: str, fail: Fail) -> NDArray[Any]:
    try:
        return np.asarray(f[name])
    except ValueError:  # object arrays need pickle, which is never allowed
        raise fail(f"array '{name}' holds Python objects; store numbers") from None


def _check(arrays: dict[str, NDArray[Any]], fail: Fail, whole_dataset: bool, values: bool) -> None:
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise fail("has one of x_test and y_test but not the other")
    pairs = [("x", "y")] + ([("x_test", "y_test")] if "x_test" in arrays else [])
    for xs, ys in pairs:
        x, y = arrays[xs], arrays[ys]
        if x.dtype.kind not in NUMBER_KINDS:
            raise fail(f"array '{xs}' has dtype {x.dtype}; features must be numbers")
        if x.ndim == 0 or y.ndim == 0:
            raise fail(f"arrays '{xs}' and '{ys}' need a leading example axis")
        if len(x) != len(y):
            raise fail(f"'{xs}' has {len(x)} rows but '{ys}' has {len(y)}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            bad = int(x.size - np.isfinite(x).sum())
            raise fail(f"array '{xs}' has {bad} non-finite values (NaN/Inf)")
        arrays[ys] = _values(y, ys, fail) if values else _labels(y, ys, fail)
    if len(arrays["y"]) == 0:
        raise fail("holds no examples")
    if values:
        return
    if "x_test" in arrays and arrays["x_test"].shape[1:] != arrays["x"].shape[1:]:
        raise fail(
            f"'x_test' examples have shape {list(arrays['x_test'].shape[1:])}, "
            f"'x' examples {list(arrays['x'].shape[1:])}"
        )
    labels = [arrays[k] for k in ("y", "y_test") if k in arrays and arrays[k].size]
    low = min(int(v.min()) for v in labels)
    high = max(int(v.max()) for v in labels)
    if low < 0:
        raise fail(f"labels must be 0..C-1; found {low}")
    if "num_classes" in arrays:
        declared = int(arrays["num_classes"])
        if high >= declared:
            raise fail(f"label {high} is out of range for num_classes={declared}")
        return
    if not whole_dataset:
        return
    distinct = len(np.unique(np.concatenate([v.ravel() for v in labels])))
    # Labels index the model's outputs: ids that no example uses still cost an output
    # each. A few unused ids are normal (a class absent from a subset); most ids unused
    # means the labels are not 0..C-1 (a stray 10^6 would build 10^6 outputs).
    if high + 1 > 2 * distinct + 1:
        raise fail(
            f"labels must be 0..C-1: {distinct} distinct values but the largest is {high} "
            f"(a {high + 1}-class model); relabel them 0..{distinct - 1}"
        )


def _values(y: NDArray[Any], name: str, fail: Fail) -> NDArray[np.float32]:
    """``y`` as float32 regression targets, one finite number per example."""
    if y.dtype.kind not in NUMBER_KINDS or y.ndim != 1 or not np.isfinite(y).all():
        raise fail(f"array '{name}' must hold one finite number per example (targets: values)")
    return y.astype(np.float32)


def _labels(y: NDArray[Any], name: str, fail: Fail) -> NDArray[np.int64]:
    """``y`` as int64, refusing what is not an integer."""
    if y.dtype.kind in LABEL_KINDS or y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        return y.astype(np.int64)
    raise fail(f"array '{name}' must hold integer labels (has dtype {y.dtype})")
