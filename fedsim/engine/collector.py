"""How Python's garbage collector is set while the in-process engine runs its rounds.

Everything alive when a run starts (torch, Flower, the data: ~250k objects) lives as long
as the run; frozen, Python's full collections stop walking it (each took ~0.1 s, about
one per thousand small client updates). Reference counting still frees what dies.

A round also allocates and frees thousands of containers (messages, records, dicts):
with Python's default threshold (a young-generation collection every 700 net
allocations) a batched round of 100 small clients ran ~4 young and, every tenth of
those, a middle-generation collection, ~0.3 ms a round in all. Almost all of those
objects are freed by reference counting before any collection could, so a higher
threshold (5,000) leaves them unscanned: one young collection in 30 such rounds.
Cyclic garbage waits longer for its collection, a few thousand objects at most.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 5_000  # net container allocations between young collections


@contextmanager
def rounds_collector() -> Iterator[None]:
    """Freeze what is alive and collect young objects less often; restore both after."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(threshold[0], YOUNG_THRESHOLD), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
