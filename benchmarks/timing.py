"""Shared timing helpers for the benchmark scripts.

Import this module before torch: it asks OpenMP to sleep rather than spin while it waits
(``OMP_WAIT_POLICY=PASSIVE``, unless set already). On a machine shared with other jobs
spinning threads steal each other's cores, and a 2-thread step then took up to 40 times
its quiet time for every contender alike (measured on the project's 2-core machine at
load 6); with passive waiting the times stay within about 2x of the quiet ones. Both
sides of every ratio run under the same setting.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import statistics
import time
from collections.abc import Callable

import torch


def device_sync(device: str) -> Callable[[], None]:
    """What waits for a device's queued work: CUDA kernels run asynchronously."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def interleaved_medians(
    fns: dict[str, Callable[[], None]],
    repeats: int,
    warmup: int = 2,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin after warm-up.

    Interleaving gives every variant the same share of a shared machine's background
    load, so the ratios between them are fair even when absolute times drift. ``sync``
    runs before the clock starts and before it stops (:func:`device_sync`).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}
