"""When simulated devices are online: on/off intervals over virtual time.

A device trace (:mod:`fedsim.engine.device_trace`) gives each device the intervals in
which it is online, as FedScale's behaviour traces do; with a period they repeat (FedScale
wraps its traces at their ``finish_time``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Availability:
    """The online intervals ``[start, end)`` of one device.

    Attributes
    ----------
    starts, ends : ndarray
        Sorted, disjoint intervals in seconds of virtual time (within ``[0, period)``
        when there is a period).
    period_s : float or None
        The intervals repeat every ``period_s`` seconds; ``None``: after the last
        interval the device stays offline.
    """

    starts: NDArray[np.float64]
    ends: NDArray[np.float64]
    period_s: float | None = None

    def _locate(self, t: float) -> tuple[float, float]:
        """Return (offset of t's period, t within it)."""
        if self.period_s is None:
            return 0.0, t
        base = math.floor(t / self.period_s) * self.period_s
        return base, t - base

    def online_at(self, t: float) -> bool:
        """Whether the device is online at virtual time ``t``."""
        _, u = self._locate(t)
        i = int(np.searchsorted(self.starts, u, side="right")) - 1
        return i >= 0 and u < self.ends[i]

    def online_mask(self, times: NDArray[np.float64]) -> NDArray[np.bool_]:
        """:meth:`online_at` for many times at once."""
        u = times if self.period_s is None else np.mod(times, self.period_s)
        i = np.searchsorted(self.starts, u, side="right") - 1
        inside = u < self.ends[np.maximum(i, 0)]
        return (i >= 0) & inside

    def offline_at(self, t: float) -> float:
        """When the interval holding ``t`` ends (``t`` itself if offline at ``t``)."""
        if not self.online_at(t):
            return t
        base, u = self._locate(t)
        i = int(np.searchsorted(self.starts, u, side="right")) - 1
        end = base + float(self.ends[i])
        if self.period_s is not None and self.ends[i] >= self.period_s:
            if self.starts[0] <= 0 and self.ends[0] >= self.period_s:
                return math.inf  # online the whole period, every period
            if self.online_at(end):  # runs on into the next period's first interval
                return self.offline_at(end)
        return end

    def next_online(self, t: float) -> float:
        """The earliest time ``>= t`` at which the device is online (``inf`` if never)."""
        if self.online_at(t):
            return t
        base, u = self._locate(t)
        i = int(np.searchsorted(self.starts, u, side="right"))
        if i < len(self.starts):
            return base + float(self.starts[i])
        if self.period_s is None or len(self.starts) == 0:
            return math.inf
        return base + self.period_s + float(self.starts[0])


def online_nodes(devices: Mapping[int, Availability | None], t: float) -> list[int]:
    """The nodes online at ``t`` (a node without availability is always online)."""
    return [n for n, a in devices.items() if a is None or a.online_at(t)]


def next_change(devices: Iterable[Availability | None], t: float) -> float:
    """The earliest time after ``t`` at which an offline device comes online (or ``inf``)."""
    times = [a.next_online(t) for a in devices if a is not None and not a.online_at(t)]
    return min(times, default=math.inf)


def wait_for_online(
    devices: Mapping[int, Availability | None], t: float, min_online: int
) -> tuple[float, list[int]]:
    """Move from ``t`` until at least ``min_online`` nodes are online.

    Returns
    -------
    tuple
        The time reached and the nodes online then; if the trace never has that many
        online again, the time is ``inf`` and the list the nodes online at ``t``.
    """
    online = online_nodes(devices, t)
    while len(online) < min(min_online, len(devices)):
        t_next = next_change(devices.values(), t)
        if math.isinf(t_next):
            return math.inf, online_nodes(devices, t)
        t = t_next
        online = online_nodes(devices, t)
    return t, online
