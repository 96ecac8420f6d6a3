"""What a reply's array values may be: the type and magnitude of what they answer.

Part of the reply checks (:mod:`fedsim.engine.reply_check`): a reply never sets the
global model's number type, and its values stay within a plausible distance of what
the server sent (docs/scenarios.md, "Replies are checked").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from numpy.typing import NDArray

from fedsim.array_codec import view
from fedsim.rounding import decode_rounded, is_rounded

NUMERIC_KINDS = "biuf"  # numpy dtype kinds a model array may have
# A reply's values may be this many times the largest magnitude of what was sent (or of
# 1, for a model near zero): local training moves weights by far less, and a poisoned
# value past it would dominate any average. The cap keeps squares finite in float32
# (1e15^2 = 1e30, summed over a million weights still < 3.4e38).
MAGNITUDE_FACTOR = 1e6
MAGNITUDE_CAP = 1e15
_REFUSED_KINDS = "bu"  # bool and unsigned bytes never stand for a float or signed weight


def sent_kinds(record: ArrayRecord) -> dict[str, tuple[np.dtype[Any], float]]:
    """Each sent array's dtype and the largest magnitude a reply to it may hold."""
    out: dict[str, tuple[np.dtype[Any], float]] = {}
    for key, array in record.items():
        try:
            value = decode_rounded(array)[0] if is_rounded(array) else view(array)
        except Exception:  # the server's own array: checked where it is made
            continue
        if value.dtype.kind not in NUMERIC_KINDS:
            continue
        largest = float(np.max(np.abs(value))) if value.size else 0.0
        scale = max(1.0, largest) if math.isfinite(largest) else 1.0
        out[key] = (value.dtype, min(MAGNITUDE_CAP, MAGNITUDE_FACTOR * scale))
    return out


def cast_problem(key: str, value: NDArray[Any], dtype: np.dtype[Any], largest: float) -> str | None:
    """Why ``value`` cannot stand for an array of ``dtype`` (None: cast it).

    Floats cast to any float (a float16 reply is widened, a float64 one rounded);
    integers widen to integers; integers become floats only where every value is exact
    in the float (|v| <= 2^24 for float32). Bool and unsigned bytes are refused: no
    optimizer step produces them, and their values would silently change the type.
    """
    have = value.dtype
    if have.kind in _REFUSED_KINDS and dtype.kind != have.kind:
        return f"array '{key}' has dtype {have}, expected {dtype}"
    if have.kind == "f" and dtype.kind == "f":
        return None
    if have.kind == dtype.kind == "i" and np.can_cast(have, dtype, "safe"):
        return None
    if have.kind == "i" and dtype.kind == "f" and largest <= 2.0 ** (np.finfo(dtype).nmant + 1):
        return None
    return f"array '{key}' has dtype {have}, expected {dtype}"
