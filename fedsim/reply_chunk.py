"""Replies of clients trained together, kept as columns as well as messages.

A stacked chunk (``engine.batch_clients``, :mod:`fedsim.client.stacked`) trains its
clients' models as one array per parameter with a leading client axis. Its replies
are still Flower messages, one per client, because strategies read messages; but the
engine does its own work on the chunk's columns: one reply check per array and chunk
instead of one per array and reply, the clock's work and the telemetry from the metric
columns, the bytes from one reply's size (every row carries the same arrays).

The columns are the replies' values: row ``r`` of ``arrays[key]`` is what
``replies[r]`` carries under ``key`` in its ``wire.ARRAYS`` record, and ``metrics[name][r]``
its metric ``name`` (tests hold them equal). A leaf module: the client side builds
chunks, the engine reads them, neither imports the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Message
from numpy.typing import NDArray


@dataclass(frozen=True)
class ReplyChunk:
    """The train replies of one stacked chunk.

    Attributes
    ----------
    jobs : tuple of int
        Row ``r``'s position among the jobs the replies answer.
    replies : list of Message
        Row ``r``'s reply, as the strategy will see it.
    arrays : dict of str to ndarray
        The ``wire.ARRAYS`` record of every row: name -> ``(rows, *shape)``.
    metrics : dict of str to ndarray
        The ``wire.METRICS`` record of every row: name -> ``(rows,)``.
    reply_bytes : int
        The payload bytes of one reply (equal for every row).
    metric_rows : list of dict, optional
        Row ``r``'s ``wire.METRICS`` record as the Python numbers it holds (a reader
        that needs the values exactly as the replies carry them takes them here).
    """

    jobs: tuple[int, ...]
    replies: list[Message]
    arrays: dict[str, NDArray[Any]]
    metrics: dict[str, NDArray[Any]]
    reply_bytes: int
    metric_rows: list[dict[str, Any]] | None = None

    def at(self, positions: Sequence[int]) -> ReplyChunk:
        """The same chunk with its jobs renumbered: job ``j`` becomes ``positions[j]``."""
        return dataclasses.replace(self, jobs=tuple(positions[j] for j in self.jobs))

    def column(self, name: str, default: float = np.nan) -> NDArray[np.float64]:
        """Metric ``name`` of every row as floats (``default`` where no row has it)."""
        values = self.metrics.get(name)
        return np.full(len(self.jobs), default) if values is None else values.astype(np.float64)


@dataclass
class TrainedTogether:
    """What training a dispatch's train jobs together gave.

    ``replies[i]`` is job ``i``'s reply, or None where the job must run through the
    ClientApp; ``chunks`` hold the stacked replies as columns (every reply a chunk
    holds is also in ``replies``).
    """

    replies: list[Message | None]
    chunks: list[ReplyChunk] = field(default_factory=list)


class ChunkRows(list[Message]):
    """A dispatch's replies, every one of them a row of the same stacked chunk.

    The in-process engine returns its replies as this list when that holds:
    ``positions[i]`` is reply ``i``'s row in :attr:`chunk`, whose columns hold what the
    reply carries. A strategy may read the columns instead of the replies (fedsim's
    ``FedAvg`` sums each key as one gathered stack); a copy of the list is a plain list.
    """

    def __init__(self, replies: Sequence[Message], chunk: ReplyChunk, positions: list[int]):
        super().__init__(replies)
        self.chunk = chunk
        self.positions = positions


def chunk_rows(replies: list[Message], rows: dict[int, tuple[ReplyChunk, int]]) -> list[Message]:
    """``replies`` as :class:`ChunkRows` if each is a row of one chunk (``rows``, by id)."""
    if not replies:
        return replies
    found = [rows.get(id(r)) for r in replies]
    first = found[0]
    if first is None or any(f is None or f[0] is not first[0] for f in found):
        return replies
    return ChunkRows(replies, first[0], [f[1] for f in found])  # type: ignore[index]
