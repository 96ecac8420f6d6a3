"""In-memory dataset arrays shared by loaders, partitioners and clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class ArrayDataset:
    """Features and integer labels, optionally with a provided test split.

    Attributes
    ----------
    x, y : ndarray
        Training features (float32, or int64 token ids; leading sample axis) and labels
        (int64; one per example, or one per position for sequence targets).
    x_test, y_test : ndarray or None
        The dataset's own test split, where it has one.
    num_classes : int
        Number of label values (labels are ``0..num_classes-1``).
    client_id, client_id_test : ndarray or None
        The natural id (writer, speaker, user; integers or strings) of each training
        and test example, where the data has one: the ``natural`` partitioner groups by it.
    """

    x: NDArray[Any]
    y: NDArray[np.int64]
    num_classes: int
    x_test: NDArray[Any] | None = None
    y_test: NDArray[np.int64] | None = None
    client_id: NDArray[Any] | None = None
    client_id_test: NDArray[Any] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example (without the sample axis)."""
        return tuple(int(d) for d in self.x.shape[1:])
