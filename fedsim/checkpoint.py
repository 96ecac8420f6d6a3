"""Run checkpoints: everything a resumed run needs to continue bit-identically.

A checkpoint taken after round ``r`` holds the global arrays and the loop's config
records, the strategy object's attributes (FedAdam's moments, FedCurv's sums, ...),
the engine's state (every node's ``context.state``, the virtual clock, telemetry), the
Python/numpy/torch RNG states and the length of ``metrics.jsonl`` at that moment. It is
pickled to ``checkpoints/checkpoint.pkl`` in the run directory through a temporary
file and an atomic rename, so a run killed while writing leaves the previous one whole.
"""

from __future__ import annotations

import os
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy

from fedsim.errors import RunDirectoryError
from fedsim.rounds import LoopState

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "checkpoint.pkl"


@runtime_checkable
class ResumableGrid(Protocol):
    """A grid whose engine state can be saved and restored (the in-process grid)."""

    def engine_state(self) -> dict[str, Any]:
        """Return the engine's state between rounds (picklable)."""

    def restore_engine_state(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`engine_state` returned."""


@dataclass
class Checkpoint:
    """The state of a run after round ``server_round``."""

    server_round: int
    loop: LoopState
    strategy_state: dict[str, Any]
    engine_state: dict[str, Any]
    rng_state: dict[str, Any]
    metrics_bytes: int


def capture_rng() -> dict[str, Any]:
    """Return the global RNG states the server and in-process clients draw from."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the RNG states :func:`capture_rng` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """The strategy object's attributes (its mutable state included)."""
    return dict(vars(strategy))


def restore_strategy(strategy: Strategy, state: dict[str, Any]) -> None:
    """Overwrite a freshly built strategy's attributes with checkpointed ones."""
    vars(strategy).update(state)


def checkpoint_path(run_dir: Path) -> Path:
    """Where a run directory keeps its latest checkpoint."""
    return run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically (temporary file, fsync, rename)."""
    path = checkpoint_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            pickle.dump(checkpoint, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        tmp.unlink(missing_ok=True)
        raise RunDirectoryError(f"cannot checkpoint this run's state: {exc}") from None
    tmp.replace(path)
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read a run directory's latest checkpoint."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise RunDirectoryError(
            f"{run_dir} has no checkpoint ({CHECKPOINT_DIR}/{CHECKPOINT_FILE}); "
            "set output.checkpoint_every to write them"
        )
    try:
        with path.open("rb") as f:
            checkpoint = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
        raise RunDirectoryError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(checkpoint, Checkpoint):
        raise RunDirectoryError(f"{path} is not a fedsim checkpoint")
    return checkpoint
