"""The hf loader on local copies written by the test (save_to_disk, parquet), and offline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedsim
from fedsim.config.schema import DataConfig
from fedsim.data.datasets import load_dataset
from fedsim.data.federated import federated_data
from fedsim.data.hub import PROBE_TIMEOUT_S
from fedsim.errors import DataUnavailableError

RNG = np.random.default_rng(0)


def _images(n: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)  # height x width x channel


def _saved_dataset(root: Path) -> tuple[Path, np.ndarray]:
    """A DatasetDict with an Image column and non-default split names, via save_to_disk."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

    features = Features(
        {"img": Image(), "digit": ClassLabel(num_classes=3), "writer": Value("string")}
    )
    train_images = _images(40)
    splits = {}
    for name, images in (("training", train_images), ("validation", _images(10))):
        splits[name] = Dataset.from_dict(
            {
                "img": list(images),
                "digit": RNG.integers(0, 3, len(images)).tolist(),
                "writer": [f"w{k}" for k in RNG.integers(0, 4, len(images))],
            },
            features=features,
        )
    DatasetDict(splits).save_to_disk(str(root))
    return root, train_images


def _cfg(path: Path | str, **keys: Any) -> Any:
    return DataConfig.model_validate({"dataset": {"name": "hf", "path": str(path), **keys}})


SAVED_KEYS = {"image_key": "img", "label_key": "digit", "train_split": "training",
              "test_split": "validation"}  # fmt: skip


def test_saved_dataset_with_image_column_becomes_chw(tmp_path: Path) -> None:
    root, images = _saved_dataset(tmp_path / "saved")
    ds = load_dataset(_cfg(root, **SAVED_KEYS).dataset)
    assert ds.x.shape == (40, 3, 8, 8) and ds.x.dtype == np.float32 and ds.num_classes == 3
    # PNG is lossless: channel c, row i, column j equals the HWC array's [i, j, c] / 255.
    assert np.allclose(ds.x[5, 2, 1, 7], images[5, 1, 7, 2] / 255.0)
    assert np.allclose(ds.x * 255.0, images.transpose(0, 3, 1, 2))
    assert ds.x_test is not None and ds.x_test.shape == (10, 3, 8, 8)


def _parquet(root: Path, n_train: int = 30, n_test: int = 8) -> dict[str, np.ndarray]:
    """Hub-style parquet files (data/<split>-00000-of-00001.parquet), nested HWC lists."""
    from datasets import Dataset

    (root / "data").mkdir(parents=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        pixels = _images(n)
        arrays[split] = pixels
        Dataset.from_dict(
            {"pixels": pixels.tolist(), "y": RNG.integers(0, 5, n).tolist()}
        ).to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return arrays


def test_parquet_with_hwc_image_lists_becomes_chw(tmp_path: Path) -> None:
    arrays = _parquet(tmp_path / "pq")
    ds = load_dataset(_cfg(tmp_path / "pq", image_key="pixels", label_key="y").dataset)
    assert ds.x.shape == (30, 3, 8, 8)
    assert np.allclose(ds.x * 255.0, arrays["train"].transpose(0, 3, 1, 2).astype(np.float32))
    assert ds.x_test is not None and ds.x_test.shape == (8, 3, 8, 8)


def test_missing_column_and_split_name_their_keys(tmp_path: Path) -> None:
    root, _ = _saved_dataset(tmp_path / "saved")
    with pytest.raises(DataUnavailableError, match=r"data\.dataset\.label_key: no column 'label'"):
        load_dataset(_cfg(root, **{**SAVED_KEYS, "label_key": "label"}).dataset)
    with pytest.raises(DataUnavailableError, match=r"data\.dataset\.test_split: no split 'test'"):
        load_dataset(_cfg(root, **{**SAVED_KEYS, "test_split": "test"}).dataset)


def test_offline_hub_name_fails_fast_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network here: the probe gives up within its timeout and one line says what to do.

    (The bound checked is the probe's own timeout plus slack for a loaded machine, not a
    benchmark: without the probe, the Hub client retried for about 25 s.)
    """
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(DataUnavailableError) as info:
        load_dataset(_cfg("someone/some-dataset").dataset)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "\n" not in message and "unreachable" in message and "save_to_disk('DIR')" in message
    assert PROBE_TIMEOUT_S <= 3 and elapsed < 5 * PROBE_TIMEOUT_S


def test_offline_flag_fails_without_trying(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataUnavailableError, match=r"data\.dataset\.path: 'a/b' is not a local"):
        load_dataset(_cfg("a/b").dataset)


def test_two_rounds_on_a_saved_dataset_naturally_partitioned(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    root, _ = _saved_dataset(tmp_path / "saved")
    tiny["data"] = {
        "dataset": {"name": "hf", "path": str(root), **SAVED_KEYS, "client_id_key": "writer"},
        "partitioner": "natural",
    }
    tiny["model"] = {"name": "cnn", "params": {"channels": [4, 8], "hidden": 8}}
    tiny["output"]["target_accuracy"] = None
    scenario = fedsim.load_scenario(tiny)
    assert scenario.data.num_clients == 4
    data = federated_data(scenario.data, scenario.seed)
    assert data.test_parts is not None and len(data.test_parts) == 4
    result = fedsim.run(scenario, tmp_path / "run")
    assert [r["round"] for r in result.metrics] == [0, 1, 2]


def test_two_rounds_on_parquet(tiny: dict[str, Any], tmp_path: Path) -> None:
    _parquet(tmp_path / "pq")
    tiny["data"] = {
        "dataset": {"name": "hf", "path": str(tmp_path / "pq"), "image_key": "pixels",
                    "label_key": "y"},
        "num_clients": 3,
    }  # fmt: skip
    tiny["output"]["target_accuracy"] = None
    result = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "run")
    assert [r["round"] for r in result.metrics] == [0, 1, 2]
