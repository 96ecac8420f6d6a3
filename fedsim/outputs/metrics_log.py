"""``metrics.jsonl``: one JSON object per round, plus in-process listeners.

The ServerApp appends records; listeners registered in the same process (the CLI's
progress bar) see each record as it is written. Engines in other processes are
followed by reading the file as it grows (:func:`following`).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim import bounded_reads, wire
from fedsim.errors import RunDirectoryError
from fedsim.outputs.callbacks import Callback, RunInfo
from fedsim.outputs.callbacks import Record as Record  # re-exported: older imports
from fedsim.run_files import open_text, write_text

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

Listener = Callable[[Record], None]
_listeners: list[Listener] = []

# The prefixes of the metrics a strategy returns (fedsim.server.loop): what `aggregate_train`
# and `aggregate_evaluate` return lands in the round's record as `train/<name>` and
# `fed-eval/<name>`, so it never overwrites a field fedsim writes itself.
TRAIN_PREFIX = "train/"
FED_EVAL_PREFIX = "fed-eval/"
# Fields that depend on the host's speed; determinism checks ignore them. The clients'
# own wall-clock seconds reach the record through the strategy's train metrics.
WALL_CLOCK_FIELDS = frozenset({"wall_time_s", f"{TRAIN_PREFIX}{wire.DURATION_S}"})


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener(record)`` for every record written while the block runs."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def replay(records: list[Record]) -> None:
    """Show the listeners records written in another process (a parallel run's)."""
    for record in records:
        for listener in list(_listeners):
            listener(record)


@contextmanager
def following(path: Path, poll_s: float = 0.2) -> Iterator[None]:
    """Show the listeners each record another process appends to ``path`` in the block.

    An engine whose ServerApp runs in another process (Flower's Ray simulation) writes
    ``metrics.jsonl`` there; a thread reads each complete line as it lands, so a progress
    bar advances per round. Nothing is started without listeners. Lines that are not a
    record are left to :func:`read_metrics` to report.
    """
    if not _listeners:
        yield
        return
    stop = threading.Event()

    def tail() -> None:
        offset, partial = 0, b""
        while True:
            stopping = stop.is_set()  # read once more after the block ends
            size = path.stat().st_size if path.is_file() else 0
            if size < offset:  # the log was started afresh
                offset, partial = 0, b""
            if size > offset:
                with path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read(size - offset)
                offset = size
                *lines, partial = (partial + chunk).split(b"\n")
                replay([r for r in map(_record_or_none, lines) if r is not None])
            if stopping:
                return
            stop.wait(poll_s)

    thread = threading.Thread(target=tail, name="fedsim-metrics-follower", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _record_or_none(line: bytes) -> Record | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def clean_record(record: Record) -> Record:
    """The record as ``metrics.jsonl`` holds it (NaN and infinities as None)."""
    return {k: _clean(v) for k, v in record.items()}


class MetricsLog(Callback):
    """Appends round records to ``metrics.jsonl`` in a run directory (the first callback).

    ``MetricsLog(run_dir)`` starts an empty log; :meth:`resumed` continues the log of
    a run restored from a checkpoint.

    Parameters
    ----------
    run_dir : Path
        The run directory.
    keep_recent : bool
        Keep the records written since the last :meth:`take_recent` (a run that
        checkpoints stores them in each checkpoint).
    """

    draws_random = False

    def __init__(self, run_dir: Path, *, keep_recent: bool = False, _keep: bool = False) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.keep_recent = keep_recent
        self.recent: list[Record] = []
        run_dir.mkdir(parents=True, exist_ok=True)
        if not _keep:
            write_text(self.path, "")

    @classmethod
    def resumed(
        cls, run_dir: Path, keep_bytes: int, recent: list[Record], server_round: int
    ) -> MetricsLog:
        """Continue the log of a run resumed after round ``server_round``.

        The log is cut back to its last complete record among the first ``keep_bytes``
        (the length it had at the checkpoint; the records after it are rerun), never
        padded. Records of rounds up to ``server_round`` that it lost (a log truncated
        or cut by a crash) are put back from ``recent``, the checkpoint's copy of the
        records written since the previous checkpoint.

        Raises
        ------
        RunDirectoryError
            If the log lost records that ``recent`` does not hold.
        """
        log = cls(run_dir, keep_recent=True, _keep=True)
        log.path.touch()  # a deleted log is one that lost every record
        kept, end = _complete_prefix(log.path, keep_bytes, server_round)
        missing = [r for r in recent if kept <= r.get("round", -1) <= server_round]
        if [r["round"] for r in missing] != list(range(kept, server_round + 1)):
            raise RunDirectoryError(
                f"{log.path} holds complete records of rounds 0..{kept - 1} only and the "
                f"checkpoint (round {server_round}) cannot rebuild the rest; "
                "start the run again"
            )
        with log.path.open("r+b") as f:
            f.truncate(end)  # end <= the file's length: cuts, never extends
        for record in missing:
            log.append(record, notify=False)
        log.recent = []
        return log

    @property
    def size(self) -> int:
        """Bytes written so far (where a checkpoint taken now would resume)."""
        return self.path.stat().st_size

    def append(self, record: Record, *, notify: bool = True) -> None:
        """Write one record and notify listeners."""
        clean = clean_record(record)
        with open_text(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.keep_recent:
            self.recent.append(clean)
        if notify:
            for listener in list(_listeners):
                listener(clean)

    def on_round_end(  # noqa: D102
        self, run: RunInfo, server_round: int, record: Record, arrays: ArrayRecord
    ) -> None:
        self.append(record)

    def sync(self) -> None:
        """Flush the log to disk (before a checkpoint that counts on its length)."""
        with self.path.open("rb") as f:
            os.fsync(f.fileno())

    def take_recent(self) -> list[Record]:
        """Return the records written since the last call, and forget them."""
        recent, self.recent = self.recent, []
        return recent


def _complete_prefix(path: Path, limit: int, last_round: int) -> tuple[int, int]:
    """Count the log's leading complete records of rounds 0, 1, ... (at most ``last_round``).

    Returns ``(count, end)``: how many there are and the byte offset just past the
    last of them, looking at the first ``limit`` bytes only.
    """
    with path.open("rb") as f:
        data = f.read(limit)
    count = end = 0
    while count <= last_round:
        newline = data.find(b"\n", end)
        if newline < 0:
            break
        try:
            record = bounded_reads.loads(data[end:newline])
        except ValueError:  # a torn, padded or garbled line: nothing after it is trusted
            break
        if not isinstance(record, dict) or record.get("round") != count:
            break
        count, end = count + 1, newline + 1
    return count, end


def read_metrics(run_dir: Path, warnings: list[str] | None = None) -> list[Record]:
    """Read every record of a run's ``metrics.jsonl``.

    Parameters
    ----------
    run_dir : Path
        The run directory.
    warnings : list of str, optional
        Given, a partial last line (a run killed while writing, a truncated copy) is
        left out and a warning appended here; otherwise it is an error.

    Raises
    ------
    RunDirectoryError
        If a line is not a JSON record (or the last one is, without ``warnings``).
    """
    path = run_dir / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    except OSError as exc:
        raise RunDirectoryError(f"cannot read {path}: {exc}") from None
    records: list[Record] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = bounded_reads.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
            continue
        if number == len(lines) and warnings is not None:  # no newline after it: torn
            warnings.append(
                f"{path}: its last line is a partial record ({len(line)} characters); "
                f"read the {len(records)} complete records before it"
            )
            continue
        raise RunDirectoryError(f"{path}: line {number} is not a JSON record")
    return records
