"""LEAF's JSON layout: tiny FEMNIST, Shakespeare and Sent140 folders written in the real format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedsim
from fedsim.config.schema import DataConfig
from fedsim.data.datasets import load_dataset
from fedsim.data.federated import federated_data
from fedsim.data.leaf import LEAF_CHARACTERS
from fedsim.errors import DataUnavailableError

RNG = np.random.default_rng(0)


def _write_leaf(root: Path, make: Any, users: dict[str, tuple[int, int]]) -> Path:
    """LEAF layout: train/ and test/, users split over two files as LEAF's shards are."""
    for split, which in (("train", 0), ("test", 1)):
        names = sorted(users)
        for part, chunk in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
            data = {u: make(users[u][which]) for u in chunk}
            doc = {
                "users": chunk,
                "num_samples": [len(data[u]["y"]) for u in chunk],
                "user_data": data,
            }
            folder = root / split
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"all_data_{part}_niid_0_keep_0_{split}_9.json").write_text(json.dumps(doc))
    return root


def _femnist(n: int) -> dict[str, list[Any]]:
    return {
        "x": RNG.random((n, 784)).round(3).tolist(),
        "y": RNG.integers(0, 62, n).tolist(),
    }


def _shakespeare(n: int) -> dict[str, list[Any]]:
    text = "".join(RNG.choice(list("abc ,.ABC\n"), size=n + 80))
    return {"x": [text[i : i + 80] for i in range(n)], "y": [text[i + 80] for i in range(n)]}


USERS = {"f0001_12": (20, 5), "f0002_40": (12, 3), "f0107_33": (30, 6), "f0200_01": (8, 2)}


def test_femnist_keeps_images_labels_and_writers(tmp_path: Path) -> None:
    root = _write_leaf(tmp_path / "femnist", _femnist, USERS)
    cfg = DataConfig.model_validate(
        {"dataset": {"name": "leaf", "path": str(root), "task": "femnist"}}
    ).dataset
    ds = load_dataset(cfg)
    assert ds.x.shape == (70, 1, 28, 28) and ds.num_classes == 62
    assert ds.x_test is not None and ds.x_test.shape == (16, 1, 28, 28)
    assert ds.client_id is not None and sorted(set(ds.client_id)) == sorted(USERS)
    first = json.loads(next(iter(sorted((root / "train").glob("*.json")))).read_text())
    user = first["users"][0]
    rows = np.flatnonzero(ds.client_id == user)
    expected = np.asarray(first["user_data"][user]["x"], dtype=np.float32).reshape(-1, 1, 28, 28)
    assert np.array_equal(ds.x[rows], expected)
    assert list(ds.y[rows]) == first["user_data"][user]["y"]


def test_shakespeare_maps_leafs_80_characters_with_next_character_targets(tmp_path: Path) -> None:
    root = _write_leaf(tmp_path / "shakespeare", _shakespeare, USERS)
    cfg = DataConfig.model_validate(
        {"dataset": {"name": "leaf", "path": str(root), "task": "shakespeare"}}
    ).dataset
    ds = load_dataset(cfg)
    assert len(LEAF_CHARACTERS) == 80 and ds.num_classes == 80
    assert ds.x.shape == (70, 80) and ds.y.shape == (70, 80)
    first = json.loads(sorted((root / "train").glob("*.json"))[0].read_text())
    data = first["user_data"][first["users"][0]]
    line, nxt = data["x"][0], data["y"][0]
    assert "".join(LEAF_CHARACTERS[i] for i in ds.x[0]) == line
    assert "".join(LEAF_CHARACTERS[i] for i in ds.y[0]) == line[1:] + nxt


def test_sent140_reads_tweet_text_through_the_vocabulary(tmp_path: Path) -> None:
    def tweets(n: int) -> dict[str, list[Any]]:
        rows = [["1467810369", "Mon Apr 06", "NO_QUERY", "u", "good day , bad zzz"]] * n
        return {"x": rows, "y": [float(i % 2) for i in range(n)]}

    root = _write_leaf(tmp_path / "sent140", tweets, {"a": (3, 1), "b": (2, 1)})
    (tmp_path / "vocab.txt").write_text("good\nday\nbad\n,\n")
    cfg = DataConfig.model_validate(
        {
            "dataset": {
                "name": "leaf",
                "path": str(root),
                "task": "sent140",
                "vocab": str(tmp_path / "vocab.txt"),
                "seq_len": 8,
            }
        }
    ).dataset
    ds = load_dataset(cfg)
    # good=2 day=3 ,=5 bad=4, zzz unknown=1, then padding 0
    assert ds.x[0].tolist() == [2, 3, 5, 4, 1, 0, 0, 0] and ds.num_classes == 2
    assert ds.y.tolist() == [0, 1, 0, 0, 1]


def test_not_a_leaf_folder_names_the_key(tmp_path: Path) -> None:
    cfg = DataConfig.model_validate(
        {"dataset": {"name": "leaf", "path": str(tmp_path), "task": "femnist"}}
    ).dataset
    with pytest.raises(DataUnavailableError, match=r"data\.dataset\.path: .*train/ and test/"):
        load_dataset(cfg)


@pytest.mark.parametrize(
    ("task", "make", "model"),
    [
        ("femnist", _femnist, {"name": "femnist-cnn"}),
        ("shakespeare", _shakespeare, {"name": "charlm", "params": {"hidden": 16}}),
    ],
)
def test_two_rounds_on_a_natural_leaf_partition(
    tiny: dict[str, Any], tmp_path: Path, task: str, make: Any, model: dict[str, Any]
) -> None:
    root = _write_leaf(tmp_path / task, make, USERS)
    tiny["data"] = {
        "dataset": {"name": "leaf", "path": str(root), "task": task},
        "partitioner": "natural",
    }
    tiny["model"] = model
    tiny["output"]["target_accuracy"] = None
    scenario = fedsim.load_scenario(tiny)
    assert scenario.data.num_clients == len(USERS)
    data = federated_data(scenario.data, scenario.seed)
    assert [len(p) for p in data.parts] == [USERS[u][0] for u in sorted(USERS)]
    assert data.test_parts is not None
    assert [len(p) for p in data.test_parts] == [USERS[u][1] for u in sorted(USERS)]
    result = fedsim.run(scenario, tmp_path / "run")
    assert [r["round"] for r in result.metrics] == [0, 1, 2]
