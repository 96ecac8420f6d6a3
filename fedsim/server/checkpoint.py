"""Run checkpoints: everything a resumed run needs to continue bit-identically.

A checkpoint taken after round ``r`` holds the global arrays and the loop's config
records, the strategy object's state (FedAdam's moments, FedCurv's sums, ...), the
engine's state (every node's ``context.state``, the virtual clock, telemetry), the
Python/numpy/torch RNG states, the length of ``metrics.jsonl`` at that moment and the
records written since the previous checkpoint, and the resolved scenario it was taken
under (with its fingerprint, which ``--resume`` checks).

It is one file, ``checkpoints/checkpoint.npz``: a zip (numpy's ``.npz`` layout) of a
``state.json`` member and one ``.npy`` member per array, written through
:mod:`fedsim.server.state_codec` and read back with ``np.load(..., allow_pickle=False)``.
Nothing in it can run code: a crafted file is at worst "not a fedsim checkpoint". It
is written to a temporary file, synced and renamed, so a run killed while writing
leaves the previous checkpoint whole. Older fedsim versions pickled
``checkpoints/checkpoint.pkl``; such a file is never opened.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import types
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim import bounded_reads
from fedsim.config.schema import Scenario
from fedsim.engine.protocols import ResumableGrid
from fedsim.engine.telemetry import RoundStats, Telemetry
from fedsim.errors import Problem, RunDirectoryError, ScenarioError
from fedsim.npz_bounds import check_npz_sizes
from fedsim.outputs.callbacks import Callback, RunInfo
from fedsim.outputs.metrics_log import MetricsLog
from fedsim.resume_rules import check_resume
from fedsim.server.loop import LoopState
from fedsim.server.node_sampling import SAMPLER
from fedsim.server.state_codec import Decoder, Encoder, StateCodecError, register_state_type

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "checkpoint.npz"
LEGACY_PICKLE = "checkpoint.pkl"  # what fedsim wrote before; never loaded
STATE_MEMBER = "state.json"
FORMAT = "fedsim-checkpoint"
VERSION = 1

# The fedsim dataclasses a checkpoint holds (decoding builds no other class).
register_state_type("loop-state")(LoopState)
register_state_type("telemetry")(Telemetry)
register_state_type("round-stats")(RoundStats)

# Strategy attributes that are configuration, not state: rebuilt from the (unchanged)
# scenario when resuming rather than saved.
_CONFIGURATION = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.ModuleType,
    partial,
    type,
)


@register_state_type("strategy-attributes")
@dataclass
class NestedStrategy:
    """The state of a strategy held by another (a wrapper's ``self.strategy``)."""

    attributes: dict[str, Any]


@dataclass
class Checkpoint:
    """The state of a run after round ``server_round``.

    Attributes
    ----------
    scenario : dict
        The resolved scenario the run had (``Scenario.model_dump(mode="json")``).
    recent_records : list of dict
        The ``metrics.jsonl`` records written since the previous checkpoint, so that a
        log that lost its tail can be rebuilt.
    """

    server_round: int
    loop: LoopState
    strategy_state: dict[str, Any]
    engine_state: dict[str, Any]
    rng_state: dict[str, Any]
    metrics_bytes: int
    scenario: dict[str, Any] = field(default_factory=dict)
    recent_records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the resolved scenario the checkpoint was taken under."""
        return scenario_fingerprint(self.scenario)


def scenario_fingerprint(scenario: dict[str, Any]) -> str:
    """SHA-256 of a scenario dump in canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(scenario, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def capture_rng() -> dict[str, Any]:
    """Return the RNG states the server and in-process clients draw from."""
    return {
        "sampling": SAMPLER.getstate(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


@contextmanager
def rng_kept() -> Iterator[None]:
    """Put the global RNG states back after the block: callbacks never change a run.

    A tracker or user callback that draws from ``random``/numpy/torch would otherwise
    shift Flower's client sampling and the clients' shuffles in later rounds.
    """
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the RNG states :func:`capture_rng` returned.

    A checkpoint from before :data:`~fedsim.server.node_sampling.SAMPLER` has no
    ``sampling`` state: the global ``random`` it saved was the sampling stream then.
    """
    SAMPLER.setstate(state.get("sampling", state["python"]))
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """The strategy object's attributes, less configuration (functions, classes).

    A strategy held by this one (a wrapper's) is saved as a :class:`NestedStrategy`.
    """
    state: dict[str, Any] = {}
    for name, value in vars(strategy).items():
        if isinstance(value, _CONFIGURATION):
            continue
        nested = isinstance(value, Strategy)
        state[name] = NestedStrategy(strategy_state(value)) if nested else value
    return state


def restore_strategy(strategy: Strategy, state: dict[str, Any]) -> None:
    """Overwrite a freshly built strategy's attributes with checkpointed ones."""
    for name, value in state.items():
        if isinstance(value, NestedStrategy):
            restore_strategy(getattr(strategy, name), value.attributes)
        else:
            setattr(strategy, name, value)


def checkpoint_path(run_dir: Path) -> Path:
    """Where a run directory keeps its latest checkpoint."""
    return run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE


# The parts of a checkpoint that go through the codec, by their name in state.json.
_ENCODED = ("loop", "strategy_state", "engine_state", "rng_state")


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically (temporary file, fsync, rename)."""
    encoder = Encoder()
    try:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "server_round": checkpoint.server_round,
            "metrics_bytes": checkpoint.metrics_bytes,
            "fingerprint": checkpoint.fingerprint,
            "scenario": checkpoint.scenario,
            "recent_records": checkpoint.recent_records,
        }
        for name in _ENCODED:
            doc[name] = encoder.encode(getattr(checkpoint, name), name)
    except StateCodecError as exc:
        raise RunDirectoryError(f"cannot checkpoint this run's state: {exc}") from None
    path = checkpoint_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr(STATE_MEMBER, json.dumps(doc))
            for name, array in encoder.arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read a run directory's latest checkpoint (no code in it ever runs)."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        legacy = path.with_name(LEGACY_PICKLE)
        if legacy.exists():
            raise RunDirectoryError(
                f"{legacy} is a pickle (an older fedsim's checkpoint format); fedsim does "
                "not load pickles, which can run code: start the run again"
            )
        raise RunDirectoryError(
            f"{run_dir} has no checkpoint ({CHECKPOINT_DIR}/{CHECKPOINT_FILE}); "
            "set output.checkpoint_every to write them"
        )
    try:
        return _read(path)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, StateCodecError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunDirectoryError(f"{path} is not a fedsim checkpoint: {first}") from None


def _read(path: Path) -> Checkpoint:
    check_npz_sizes(path)  # before numpy allocates what a header claims
    with np.load(path, allow_pickle=False) as archive:
        if not isinstance(archive, np.lib.npyio.NpzFile) or STATE_MEMBER not in archive.files:
            raise ValueError(f"no {STATE_MEMBER} in it")
        raw: object = archive[STATE_MEMBER]  # not a .npy member: numpy returns its bytes
        if not isinstance(raw, bytes):
            raise ValueError(f"{STATE_MEMBER} is an array, not JSON")
        doc = bounded_reads.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"{STATE_MEMBER} is not a {FORMAT}")
        if doc.get("version") != VERSION:
            raise ValueError(f"format version {doc.get('version')!r}, this fedsim reads {VERSION}")
        arrays = {name: archive[name] for name in archive.files if name != STATE_MEMBER}
    decoder = Decoder(arrays)
    parts = {name: decoder.decode(doc[name]) for name in _ENCODED}
    checkpoint = Checkpoint(
        server_round=int(doc["server_round"]),
        metrics_bytes=int(doc["metrics_bytes"]),
        scenario=dict(doc["scenario"]),
        recent_records=list(doc["recent_records"]),
        **parts,
    )
    if not isinstance(checkpoint.loop, LoopState):
        raise ValueError("its loop state is not a LoopState")
    if doc.get("fingerprint") != checkpoint.fingerprint:
        raise ValueError("its scenario does not match its fingerprint")
    return checkpoint


class Checkpointer(Callback):
    """A checkpoint every ``output.checkpoint_every`` rounds (a callback after the log).

    It holds the loop's :class:`LoopState`, which the round loop updates in place, so
    at a round's end it saves what ``Strategy.start`` would carry into the next round.
    """

    draws_random = False  # it reads the generators' states, and draws from none

    def __init__(
        self,
        scenario: Scenario,
        run_dir: Path,
        strategy: Strategy,
        grid: Grid,
        log: MetricsLog,
        state: LoopState,
    ) -> None:
        if not isinstance(grid, ResumableGrid):
            raise ScenarioError(
                [Problem("output.checkpoint_every", "this engine cannot checkpoint its nodes")]
            )
        self.every = scenario.output.checkpoint_every or 1
        self.scenario = scenario.model_dump(mode="json")
        self.run_dir, self.strategy, self.grid, self.log = run_dir, strategy, grid, log
        self.state = state

    def on_round_end(
        self, run: RunInfo, server_round: int, record: dict[str, Any], arrays: ArrayRecord
    ) -> None:
        """Save the run's state if ``server_round`` (> 0) is a multiple of ``every``."""
        if server_round == 0 or server_round % self.every:
            return
        self.log.sync()  # the log the checkpoint counts on is on disk before it is
        save_checkpoint(
            self.run_dir,
            Checkpoint(
                server_round=server_round,
                loop=self.state,
                strategy_state=strategy_state(self.strategy),
                engine_state=self.grid.engine_state(),
                rng_state=capture_rng(),
                metrics_bytes=self.log.size,
                scenario=self.scenario,
                recent_records=self.log.take_recent(),
            ),
        )


def resume_from(scenario: Scenario, run_dir: Path, strategy: Strategy, grid: Grid) -> Checkpoint:
    """Load the run's checkpoint and put strategy and engine back in its state."""
    checkpoint = load_checkpoint(run_dir)
    if not isinstance(grid, ResumableGrid):
        raise ScenarioError([Problem("engine.name", "this engine cannot resume a run")])
    # `fedsim run --resume` checked this already; a resume requested through Flower's
    # run config (a deployment) is held to the same rules here.
    check_resume(checkpoint.scenario, scenario.model_dump(mode="json"), checkpoint.server_round)
    restore_strategy(strategy, checkpoint.strategy_state)
    grid.restore_engine_state(checkpoint.engine_state)
    return checkpoint
