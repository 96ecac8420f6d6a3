"""Per-example natural ids (writer, speaker, user) read beside a dataset's arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedsim.errors import DataUnavailableError

TRAIN_KEY = "client_id"
TEST_KEY = "client_id_test"


def npz_client_ids(
    f: Any, path: Path, num_train: int, num_test: int | None
) -> dict[str, NDArray[Any] | None]:
    """Read the optional ``client_id`` and ``client_id_test`` arrays of an open ``.npz``.

    Parameters
    ----------
    f : numpy.lib.npyio.NpzFile
        The open file.
    path : Path
        Its path, for messages.
    num_train, num_test : int
        Number of training examples, and of test examples (``None``: no test split).

    Returns
    -------
    dict
        ``client_id`` and ``client_id_test`` (``None`` where absent), ready to pass to
        :class:`~fedsim.data.arrays.ArrayDataset`.

    Raises
    ------
    DataUnavailableError
        If an id array is not one-dimensional, has a length other than its split's, or
        ``client_id_test`` comes without a test split (key ``data.dataset.path``).
    """
    out: dict[str, NDArray[Any] | None] = {TRAIN_KEY: None, TEST_KEY: None}
    for key, expected in ((TRAIN_KEY, num_train), (TEST_KEY, num_test)):
        if key not in f.files:
            continue
        if expected is None:
            raise DataUnavailableError(
                f"data.dataset.path: {path} has '{key}' but no x_test/y_test it could label"
            )
        ids = np.asarray(f[key])
        if ids.ndim != 1 or len(ids) != expected:
            raise DataUnavailableError(
                f"data.dataset.path: {path}: '{key}' has shape {ids.shape}, "
                f"expected ({expected},): one id per example"
            )
        out[key] = ids
    return out
