"""Device traces: real device populations read from a file, in FedScale's style.

FedScale describes each device by its compute time per sample and link bandwidth
(``computation`` in ms, ``communication`` in kbps) and its availability by on/off
intervals (``active``/``inactive`` times, wrapping at ``finish_time``). fedsim reads the
same facts from JSON (never pickle: a data file must not execute code)::

    {
      "period_s": 86400,
      "devices": [
        {"ms_per_sample": 12.5, "uplink_kbps": 2000, "downlink_kbps": 8000,
         "online": [[0, 3600], [7200, 86400]]}
      ]
    }

``period_s`` (optional) makes the intervals repeat; without it a device is offline after
its last interval. A device without ``online`` is always online. Clients are matched to
devices by a seeded draw (:func:`match_devices`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedsim import bounded_reads
from fedsim.engine.availability import Availability
from fedsim.errors import Problem, ScenarioError

KEY = "system.trace.path"
_MATCH_STREAM = 0x7ACE  # the device draw has its own stream of the run seed


@dataclass(frozen=True)
class TraceDevice:
    """One device of a trace.

    Attributes
    ----------
    ms_per_sample : float
        Milliseconds of training compute per example.
    uplink_kbps, downlink_kbps : float
        Link bandwidths in kilobits per second.
    availability : Availability or None
        When it is online (``None``: always).
    """

    ms_per_sample: float
    uplink_kbps: float
    downlink_kbps: float
    availability: Availability | None


def _fail(message: str) -> ScenarioError:
    return ScenarioError([Problem(KEY, message)])


def _positive(device: dict[str, Any], key: str, where: str) -> float:
    value = device.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise _fail(f"{where}.{key}: needs a number > 0, got {value!r}")
    return float(value)


def _intervals(raw: Any, period: float | None, where: str) -> Availability | None:
    if raw is None:
        return None
    try:
        arr = np.asarray(raw, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise _fail(f"{where}.online: needs a list of [start, end] pairs") from None
    starts, ends = arr[:, 0], arr[:, 1]
    bad = (
        not np.isfinite(arr).all()
        or (starts < 0).any()
        or (ends <= starts).any()
        or (starts[1:] < ends[:-1]).any()
        or (period is not None and (ends > period).any())
    )
    if bad:
        limit = f" within [0, period_s={period}]" if period is not None else ""
        raise _fail(f"{where}.online: intervals must be sorted, disjoint, end > start >= 0{limit}")
    return Availability(starts.copy(), ends.copy(), period)


def load_trace(path: str | Path) -> list[TraceDevice]:
    """Read and check a trace file.

    Raises
    ------
    ScenarioError
        If the file is missing, not JSON, or any device record is malformed (key
        ``system.trace.path``; the message names the device and field).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise _fail(f"file not found: {p}")
    try:
        raw = bounded_reads.loads(bounded_reads.read_text(p))
    except bounded_reads.UnreadableFile as exc:
        raise _fail(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise _fail(f"{p} is not a JSON file: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("devices"), list) or not raw["devices"]:
        raise _fail(f"{p}: needs a mapping with a non-empty list 'devices'")
    period = raw.get("period_s")
    if period is not None and (not isinstance(period, int | float) or not period > 0):
        raise _fail(f"{p}: period_s must be a number > 0, got {period!r}")
    devices = []
    for i, device in enumerate(raw["devices"]):
        where = f"devices[{i}]"
        if not isinstance(device, dict):
            raise _fail(f"{where}: needs a mapping")
        devices.append(
            TraceDevice(
                _positive(device, "ms_per_sample", where),
                _positive(device, "uplink_kbps", where),
                _positive(device, "downlink_kbps", where),
                _intervals(device.get("online"), None if period is None else float(period), where),
            )
        )
    return devices


def match_devices(num_devices: int, num_clients: int, seed: int) -> NDArray[np.int64]:
    """Return the trace device of each client: a seeded draw, every device used alike.

    With more devices than clients, each client gets a distinct device; with fewer,
    the devices are dealt out in shuffled rounds (each used ``ceil`` or ``floor`` of
    ``num_clients / num_devices`` times).
    """
    rng = np.random.default_rng([seed, _MATCH_STREAM])
    rounds = math.ceil(num_clients / num_devices)
    dealt = np.concatenate([rng.permutation(num_devices) for _ in range(rounds)])
    return dealt[:num_clients].astype(np.int64)
