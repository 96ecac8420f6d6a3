"""Data in the wrong layout is fixed (and said once) or is one line naming the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from fedsim.cli.main import app
from fedsim.data.image_layout import channels_first
from tests.conftest import TINY, write_yaml
from tests.data.test_leaf import USERS, _femnist, _shakespeare, _write_leaf

RNG = np.random.default_rng(3)


def _images(path: Path, shape: tuple[int, ...], n: int = 80) -> Path:
    """Ten classes of ``n`` images whose class shows in their mean brightness."""
    y = np.arange(n) % 10
    x = RNG.random((n, *shape), dtype=np.float32) * 0.2 + (y / 10.0).reshape(-1, *[1] * len(shape))
    np.savez(path, x=x.astype(np.float32), y=y)
    return path


def _scenario(tmp_path: Path, dataset: dict[str, Any], model: str = "cnn") -> Path:
    data = copy.deepcopy(TINY)
    data["rounds"] = 1
    data["data"]["dataset"] = dataset
    params = {"channels": [4, 8], "hidden": 8} if model == "cnn" else {}
    data["model"] = {"name": model, "params": params}
    return write_yaml(tmp_path / "s.yaml", data)


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_channels_last_images_train_with_cnn_and_the_transpose_is_said(tmp_path: Path) -> None:
    """(N, 16, 16, 3) once gave a 60-line torch traceback from validate and run."""
    npz = _images(tmp_path / "rgb.npz", (16, 16, 3))
    path = _scenario(tmp_path, {"name": "npz", "path": str(npz)})
    checked = _cli("validate", str(path))
    assert checked.exit_code == 0, checked.output
    notices = [line for line in checked.output.splitlines() if "channels-last" in line]
    assert len(notices) == 1, checked.output  # said once, though read twice
    assert "transposed them to (N, C, H, W) = (80, 3, 16, 16)" in notices[0]
    result = _cli("run", "-q", str(path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "final accuracy" in result.output


def test_grey_images_gain_a_channel(tmp_path: Path) -> None:
    npz = _images(tmp_path / "grey.npz", (12, 12))
    result = _cli("run", "-q", str(_scenario(tmp_path, {"name": "npz", "path": str(npz)})),
                  "--out", str(tmp_path / "out"))  # fmt: skip
    assert result.exit_code == 0, result.output


def test_channels_first_leaves_other_layouts_alone() -> None:
    for shape in [(5, 3, 16, 16), (5, 16, 16), (5, 40), (5, 3, 8, 3)]:
        assert channels_first(np.zeros(shape), "k").shape == shape
    assert channels_first(np.zeros((5, 8, 8, 1)), "k").shape == (5, 1, 8, 8)


def test_a_shape_the_model_cannot_take_is_one_line(tmp_path: Path) -> None:
    """2x2 images: the cnn's second pooling has nothing left to pool."""
    npz = _images(tmp_path / "tiny.npz", (3, 2, 2))
    result = _cli("validate", str(_scenario(tmp_path, {"name": "npz", "path": str(npz)})))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "model.name: 'cnn' cannot be built for examples of shape" in lines[0]


@pytest.mark.parametrize(("task", "files"), [("shakespeare", _femnist), ("femnist", _shakespeare),
                                             ("sent140", _femnist)])  # fmt: skip
def test_a_leaf_task_that_does_not_match_its_files_is_one_line(
    tmp_path: Path, task: str, files: Any
) -> None:
    root = _write_leaf(tmp_path / "leaf", files, USERS)
    (tmp_path / "vocab.txt").write_text("hello\nworld\n")
    dataset = {
        "name": "leaf",
        "path": str(root),
        "task": task,
        "vocab": str(tmp_path / "vocab.txt"),
    }
    result = _cli("validate", str(_scenario(tmp_path, dataset, model="mlp")))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "data.dataset" in lines[0], lines
    assert "Traceback" not in result.output
