"""CIFAR's Python batches, written by the test in the real layout; and no code execution."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedsim
from fedsim.config.schema import DataConfig
from fedsim.data.datasets import load_dataset
from fedsim.errors import DataUnavailableError

RNG = np.random.default_rng(0)


def _batch(path: Path, n: int, **labels: list[int]) -> np.ndarray:
    """A batch as CIFAR's archive holds it: bytes keys, (n, 3072) uint8 rows (R, G, B planes)."""
    data = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    doc = {b"batch_label": b"test batch", b"data": data, b"filenames": [b"x.png"] * n}
    doc |= {k.encode(): v for k, v in labels.items()}
    path.write_bytes(pickle.dumps(doc, protocol=2))
    return data


def _cifar10(root: Path) -> Path:
    root.mkdir(parents=True)
    for i in range(1, 6):
        _batch(root / f"data_batch_{i}", 12, labels=RNG.integers(0, 10, 12).tolist())
    _batch(root / "test_batch", 10, labels=RNG.integers(0, 10, 10).tolist())
    return root


def _cfg(root: Path, **extra: Any) -> Any:
    return DataConfig.model_validate({"dataset": {"name": "cifar", "path": str(root), **extra}})


def test_cifar10_batches_become_chw_images(tmp_path: Path) -> None:
    root = _cifar10(tmp_path / "cifar-10-batches-py")
    ds = load_dataset(_cfg(root).dataset)
    assert ds.x.shape == (60, 3, 32, 32) and ds.num_classes == 10
    assert ds.x_test is not None and ds.x_test.shape == (10, 3, 32, 32)
    first = pickle.loads((root / "data_batch_1").read_bytes(), encoding="bytes")
    # Pixel (row 2, column 5) of image 0: red at 2*32+5, green 1024 later, blue 2048 later.
    red, green, blue = (int(first[b"data"][0][p * 1024 + 2 * 32 + 5]) for p in range(3))
    assert np.allclose(ds.x[0, :, 2, 5] * 255.0, [red, green, blue])
    assert ds.y[:12].tolist() == first[b"labels"]


def test_cifar100_reads_fine_or_coarse_labels(tmp_path: Path) -> None:
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for name, n in (("train", 20), ("test", 5)):
        _batch(
            root / name,
            n,
            fine_labels=RNG.integers(0, 100, n).tolist(),
            coarse_labels=RNG.integers(0, 20, n).tolist(),
        )
    fine = load_dataset(_cfg(root).dataset)
    coarse = load_dataset(_cfg(root, labels="coarse").dataset)
    assert (fine.num_classes, coarse.num_classes) == (100, 20)
    raw = pickle.loads((root / "train").read_bytes(), encoding="bytes")
    assert coarse.y.tolist() == raw[b"coarse_labels"]


def test_a_batch_that_would_run_code_is_refused(tmp_path: Path) -> None:
    root = _cifar10(tmp_path / "cifar-10-batches-py")

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (root / "test_batch").write_bytes(pickle.dumps({b"data": Exploit()}, protocol=2))
    with pytest.raises(DataUnavailableError, match=r"refusing to load global .*system"):
        load_dataset(_cfg(root).dataset)
    assert not (tmp_path / "pwned").exists()


def test_two_rounds_on_cifar_batches(tiny: dict[str, Any], tmp_path: Path) -> None:
    root = _cifar10(tmp_path / "cifar-10-batches-py")
    tiny["data"] = {"dataset": {"name": "cifar", "path": str(root)}, "num_clients": 3}
    tiny["model"] = {"name": "resnet-gn", "params": {"widths": [4, 8, 8]}}
    tiny["output"]["target_accuracy"] = None
    result = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "run")
    assert [r["round"] for r in result.metrics] == [0, 1, 2]
