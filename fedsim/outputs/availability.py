"""What a device trace did in a run: the clock's log, and who was online when."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedsim.engine.availability import Availability
from fedsim.engine.clock import ClockEvent

EVENTS_FILE = "clock_events.csv"
PLOT_FILE = "availability.png"
_SAMPLES = 1000  # points of the online-count curve


def write_events(events: Sequence[ClockEvent], path: Path) -> Path:
    """Write the clock's log as CSV: ``time_s,node,kind,dispatch``, in time order.

    (The clock logs in the order messages were handled: each reply or dropout right
    after its own ``sent``; the file is sorted by time, stably.)
    """
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["time_s", "node", "kind", "dispatch"])
        for e in sorted(events, key=lambda e: e.time_s):
            writer.writerow([f"{e.time_s:.6f}", e.node, e.kind, e.dispatch])
    return path


def online_counts(
    availability: Sequence[Availability | None], times: NDArray[np.float64]
) -> NDArray[np.int64]:
    """Number of nodes online at each of ``times`` (nodes sharing a device count each)."""
    counts = np.zeros(len(times), dtype=np.int64)
    shared = Counter(id(a) for a in availability)
    for a in {id(a): a for a in availability}.values():
        weight = shared[id(a)]
        counts += weight if a is None else weight * a.online_mask(times).astype(np.int64)
    return counts


def plot_availability(
    availability: Sequence[Availability | None], events: Sequence[ClockEvent], path: Path
) -> Path:
    """Plot online nodes over virtual time, with each dispatch's participants and dropouts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = max((e.time_s for e in events), default=1.0) or 1.0
    times = np.linspace(0.0, end, _SAMPLES)
    fig, ax = plt.subplots(figsize=(8, 4), constrained_layout=True)
    ax.step(times, online_counts(availability, times), where="post", label="online")
    for kind, marker in (("sent", "o"), ("dropout", "x"), ("offline", "s")):
        by_dispatch = Counter(e.dispatch for e in events if e.kind == kind)
        first: dict[int, float] = {}
        for e in events:
            if e.kind == kind:
                first.setdefault(e.dispatch, e.time_s)
        if by_dispatch:
            xs = [first[d] for d in by_dispatch]
            ax.scatter(xs, list(by_dispatch.values()), marker=marker, label=kind, zorder=3)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("nodes")
    ax.set_title("device availability (trace) and each dispatch's messages")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_trace_outputs(
    events: Sequence[ClockEvent],
    availability: Sequence[Availability | None],
    run_dir: Path,
    *,
    plots: bool,
) -> None:
    """With a device trace: the clock's log and (``plots``) availability over time."""
    write_events(events, run_dir / EVENTS_FILE)
    if plots:
        plot_availability(availability, events, run_dir / "plots" / PLOT_FILE)
