"""What a model is built for, from a dataset section alone: input shape and classes.

``fedsim validate`` builds each run's model so that the model's own argument checks
run, without loading (or downloading) the data. Datasets whose shape is fixed by their
section are listed here; a local ``.npz`` is read for it (validation reads it anyway);
the rest (Hub and LEAF datasets) are not built at validation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedsim.config.schema import (
    CifarDataset,
    DigitsDataset,
    Mnist1dDataset,
    NpzDataset,
    TextDataset,
)

Shape = tuple[tuple[int, ...], int]  # (one example's shape, number of classes)


def _cifar(cfg: CifarDataset) -> Shape:
    # cifar-10-batches-py/ holds CIFAR-10; cifar-100-python/ holds CIFAR-100.
    hundred = "100" in Path(cfg.path).name
    classes = (100 if cfg.labels == "fine" else 20) if hundred else 10
    return (3, 32, 32), classes


def _npz(cfg: NpzDataset) -> Shape:
    from fedsim.data.datasets import load_npz

    data = load_npz(cfg)
    return tuple(int(d) for d in data.x.shape[1:]), data.num_classes


SHAPES: dict[type, Callable[[Any], Shape]] = {
    DigitsDataset: lambda cfg: ((1, 8, 8), 10),
    Mnist1dDataset: lambda cfg: ((40,), 10),
    TextDataset: lambda cfg: ((cfg.seq_len,), 80),  # ids 0..79 (fedsim.data.datasets)
    CifarDataset: _cifar,
    NpzDataset: _npz,
}


def model_input(dataset: Any) -> Shape | None:
    """The (input shape, classes) a model for ``dataset`` takes; None if unknown here."""
    shape = SHAPES.get(type(dataset))
    return None if shape is None else shape(dataset)
