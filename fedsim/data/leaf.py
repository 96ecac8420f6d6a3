"""The LEAF benchmark's JSON layout: FEMNIST, Shakespeare and Sent140, by user.

LEAF (Caldas et al. 2018) writes each split as JSON files in ``train/`` and ``test/``,
each ``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...],
"y": [...]}}}``. Every example keeps its user as its client id, so the ``natural``
partitioner gives each LEAF user one client, and each client its own test split.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedsim.config.schema import LeafDataset
from fedsim.data.arrays import ArrayDataset
from fedsim.data.datasets import DATASETS
from fedsim.errors import DataUnavailableError
from fedsim.registry import Registry

# LEAF's Shakespeare vocabulary (models/utils/language_utils.py): a character's id is
# its position in this string, 80 symbols: the charlm model's vocabulary size.
LEAF_CHARACTERS = (
    "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
)
_CHAR_ID = {c: i for i, c in enumerate(LEAF_CHARACTERS)}
_SPACE = _CHAR_ID[" "]  # where LEAF's `find` would give -1 (no such id), we use space
# Sent140 token ids: 0 pads, 1 is an unknown word, the vocabulary file's words follow.
PAD, UNKNOWN = 0, 1

Split = tuple[list[Any], list[Any], list[str]]  # x, y, user of each example
Converter = Callable[[Split, LeafDataset], tuple[NDArray[Any], NDArray[np.int64], int]]
LEAF_TASKS: Registry[Converter] = Registry("LEAF tasks")


def _read_split(folder: Path) -> Split:
    """Every example of one split folder, in file then user order."""
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataUnavailableError(f"data.dataset.path: no LEAF .json files in {folder}")
    xs: list[Any] = []
    ys: list[Any] = []
    users: list[str] = []
    for file in files:
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
            for user in raw["users"]:
                data = raw["user_data"][user]
                if len(data["x"]) != len(data["y"]):
                    raise ValueError(f"user {user!r} has {len(data['x'])} x, {len(data['y'])} y")
                xs += data["x"]
                ys += data["y"]
                users += [str(user)] * len(data["y"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataUnavailableError(
                f"data.dataset.path: {file} is not a LEAF JSON file ({type(exc).__name__}: "
                f"{exc}); expected users, num_samples, user_data with x and y"
            ) from None
    return xs, ys, users


@LEAF_TASKS.register("femnist", help="28x28 handwritten characters, 62 classes, by writer")
def _femnist(split: Split, cfg: LeafDataset) -> tuple[NDArray[Any], NDArray[np.int64], int]:
    xs, ys, _ = split
    try:
        x = np.asarray(xs, dtype=np.float32).reshape(-1, 1, 28, 28)
    except ValueError:
        raise DataUnavailableError(
            "data.dataset.path: FEMNIST examples must be 784 pixel values (28x28)"
        ) from None
    return x, np.asarray(ys, dtype=np.int64), 62


def _char_ids(text: str) -> list[int]:
    return [_CHAR_ID.get(c, _SPACE) for c in text]


@LEAF_TASKS.register("shakespeare", help="next character of 80-character lines, by role")
def _shakespeare(split: Split, cfg: LeafDataset) -> tuple[NDArray[Any], NDArray[np.int64], int]:
    """Ids of LEAF's 80 characters; the target at every position is the next character.

    LEAF's ``x`` is an 80-character string and ``y`` the character after it; the
    targets are ``x`` shifted by one followed by ``y`` (what the charlm model trains on;
    LEAF's reference scores only the last position).
    """
    xs, ys, _ = split
    lengths = {len(s) for s in xs}
    if len(lengths) > 1:
        raise DataUnavailableError(
            f"data.dataset.path: Shakespeare lines must have one length, got {sorted(lengths)}"
        )
    x = np.asarray([_char_ids(s) for s in xs], dtype=np.int64).reshape(len(xs), -1)
    last = np.asarray([_char_ids(s)[:1] or [_SPACE] for s in ys], dtype=np.int64)
    y = np.concatenate([x[:, 1:], last], axis=1)
    return x, y, len(LEAF_CHARACTERS)


def _vocabulary(cfg: LeafDataset) -> dict[str, int]:
    if cfg.vocab is None:
        raise DataUnavailableError("data.dataset.vocab: sent140 needs a vocabulary file")
    path = Path(cfg.vocab).expanduser()
    if not path.is_file():
        raise DataUnavailableError(f"data.dataset.vocab: file not found: {path}")
    words = [w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]
    return {w: i + 2 for i, w in enumerate(words)}


@LEAF_TASKS.register("sent140", help="tweet sentiment (2 classes) as token ids, by user")
def _sent140(split: Split, cfg: LeafDataset) -> tuple[NDArray[Any], NDArray[np.int64], int]:
    """Token ids of the tweet text (LEAF's ``x[4]``), split as LEAF's ``split_line`` does."""
    xs, ys, _ = split
    vocab = _vocabulary(cfg)
    x = np.full((len(xs), cfg.seq_len), PAD, dtype=np.int64)
    for i, row in enumerate(xs):
        text = row[4] if isinstance(row, list) and len(row) > 4 else str(row)
        ids = [vocab.get(w, UNKNOWN) for w in re.findall(r"[\w']+|[.,!?;]", text)]
        x[i, : min(len(ids), cfg.seq_len)] = ids[: cfg.seq_len]
    return x, np.asarray([int(float(v)) for v in ys], dtype=np.int64), 2


@DATASETS.register("leaf", help="LEAF JSON (femnist, shakespeare, sent140), users as client ids")
def load_leaf(cfg: LeafDataset) -> ArrayDataset:
    """Read LEAF's ``train/`` and ``test/`` JSON folders under ``cfg.path``."""
    root = Path(cfg.path).expanduser()
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DataUnavailableError(
            f"data.dataset.path: {root} needs LEAF's train/ and test/ folders "
            "(docs/scenarios.md, the leaf dataset, says how to make them)"
        )
    convert = LEAF_TASKS.get(cfg.task)
    train, test = _read_split(root / "train"), _read_split(root / "test")
    x, y, num_classes = convert(train, cfg)
    x_test, y_test, _ = convert(test, cfg)
    return ArrayDataset(
        x=x,
        y=y,
        num_classes=num_classes,
        x_test=x_test,
        y_test=y_test,
        client_id=np.asarray(train[2]),
        client_id_test=np.asarray(test[2]),
    )
