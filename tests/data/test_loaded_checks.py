"""LEAF and Hugging Face data held to a data file's rules (issue #33, items 4 and 7).

NaN features, a label past the task's classes and one stray label of 10^6 (a
1,000,001-class model) are refused by the same check as a ``.npz`` file's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsim.config.schema import DataConfig
from fedsim.data.datasets import load_dataset
from fedsim.errors import DataUnavailableError
from tests.data.test_leaf import USERS, _femnist, _write_leaf


def _leaf(root: Path, spoil: Any) -> Any:
    def make(n: int) -> dict[str, list[Any]]:
        doc = _femnist(n)
        spoil(doc)
        return doc

    _write_leaf(root, make, USERS)
    return DataConfig.model_validate(
        {"dataset": {"name": "leaf", "path": str(root), "task": "femnist"}}
    ).dataset


def test_leaf_nan_pixel_is_refused(tmp_path: Path) -> None:
    cfg = _leaf(tmp_path / "f", lambda d: d["x"][0].__setitem__(3, math.nan))
    with pytest.raises(DataUnavailableError, match=r"data\.dataset\.path: .*non-finite values"):
        load_dataset(cfg)


def test_leaf_label_past_the_tasks_classes_is_refused(tmp_path: Path) -> None:
    cfg = _leaf(tmp_path / "f", lambda d: d["y"].__setitem__(0, 62))
    with pytest.raises(DataUnavailableError, match="label 62 is out of range for num_classes=62"):
        load_dataset(cfg)


def _parquet(root: Path, x: np.ndarray, y: list[int]) -> Any:
    from datasets import Dataset

    (root / "data").mkdir(parents=True)
    for split in ("train", "test"):
        Dataset.from_dict({"x": x.tolist(), "y": y}).to_parquet(
            str(root / "data" / f"{split}-00000-of-00001.parquet")
        )
    return DataConfig.model_validate(
        {"dataset": {"name": "hf", "path": str(root), "image_key": "x", "label_key": "y"}}
    ).dataset


def test_hf_stray_label_is_refused_as_in_npz(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((12, 4)).astype(np.float32)
    cfg = _parquet(tmp_path / "pq", x, [0, 1, 2] * 3 + [0, 1, 10**6])
    with pytest.raises(DataUnavailableError, match="a 1000001-class model"):
        load_dataset(cfg)


def test_hf_nan_features_are_refused(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((12, 4)).astype(np.float32)
    x[3, 1] = np.nan
    cfg = _parquet(tmp_path / "pq", x, [0, 1, 2] * 4)
    with pytest.raises(DataUnavailableError, match="non-finite values"):
        load_dataset(cfg)
