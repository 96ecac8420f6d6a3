"""``metrics.jsonl``: one JSON object per round, plus in-process listeners.

The ServerApp appends records; listeners registered in the same process (the CLI's
progress bar) see each record as it is written. Engines in other processes are
followed by reading the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Record = dict[str, Any]
Listener = Callable[[Record], None]
_listeners: list[Listener] = []

# Fields that depend on the host's speed; determinism checks ignore them.
WALL_CLOCK_FIELDS = frozenset({"wall_time_s"})


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener(record)`` for every record written while the block runs."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Appends round records to ``metrics.jsonl`` in a run directory.

    Parameters
    ----------
    run_dir : Path
        The run directory.
    keep_bytes : int
        Length of an existing log to keep (a resumed run cuts the records written
        after its checkpoint); 0 starts an empty log.
    """

    def __init__(self, run_dir: Path, keep_bytes: int = 0) -> None:
        self.path = run_dir / "metrics.jsonl"
        run_dir.mkdir(parents=True, exist_ok=True)
        if keep_bytes:
            with self.path.open("r+b") as f:
                f.truncate(keep_bytes)
        else:
            self.path.write_text("", encoding="utf-8")

    @property
    def size(self) -> int:
        """Bytes written so far (where a checkpoint taken now would resume)."""
        return self.path.stat().st_size

    def append(self, record: Record) -> None:
        """Write one record and notify listeners."""
        clean = {k: _clean(v) for k, v in record.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
        for listener in list(_listeners):
            listener(clean)


def read_metrics(run_dir: Path) -> list[Record]:
    """Read every record of a run's ``metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
