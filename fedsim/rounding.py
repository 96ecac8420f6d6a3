"""Arrays rounded to a coarse grid and packed: the wire format of ``compression``.

An array ``x`` of n floats is coded on a grid of ``2**bits`` points per array: offset
``lo = min(x)`` and step ``(max(x) - lo) / (2**bits - 1)``. Each coordinate becomes the
index ``k`` of a grid point, packed ``bits`` to a coordinate, so the payload is the
``HEADER`` (offset, step, bits, a relative flag) plus ``ceil(bits * n / 8)`` bytes.

- ``randomized-rounding`` (Golovin et al. 2013): with ``q = (x - lo) / step``,
  ``k = floor(q) + 1`` with probability ``q - floor(q)``, else ``floor(q)``. The decoded
  value is unbiased, ``E[x̂] = x``, with variance ``step² · f (1 - f)``, f the fraction.
- ``deterministic-rounding``: the nearest grid point; biased towards grid points (a
  coordinate a quarter step above one always decodes to it).

The coded array is a Flower :class:`~flwr.app.Array` of stype :data:`ROUNDED_STYPE`,
with the original dtype and shape, so it travels through any Flower transport and
``ArrayRecord.count_bytes`` counts its true size. The relative flag says the array is a
difference to a reference both sides hold (an update to the model the client
received); the receiver adds the reference back. Non-float arrays and arrays with
non-finite values are never coded (they travel as they are).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Array
from numpy.typing import NDArray

from fedsim.registry import Registry

ROUNDED_STYPE = "fedsim.rounded"
HEADER = struct.Struct("<ddBB")  # offset, step (float64), bits, relative (0/1)

Rounder = Callable[[NDArray[np.float64], np.random.Generator], NDArray[np.float64]]
ROUNDINGS: Registry[Rounder] = Registry("rounding methods")


@ROUNDINGS.register("randomized-rounding", help="unbiased: up with probability frac(q)")
def randomized(q: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.float64]:
    """Round each ``q`` to ``floor(q) + 1`` with probability ``q - floor(q)``."""
    low = np.floor(q)
    return low + (rng.random(q.shape) < q - low)


@ROUNDINGS.register("deterministic-rounding", help="nearest grid point (biased)")
def deterministic(q: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.float64]:
    """Round each ``q`` to the nearest integer (halves up)."""
    return np.floor(q + 0.5)


def codable(x: NDArray[Any]) -> bool:
    """Whether ``x`` is coded at all: a non-empty float array with finite values only."""
    return x.dtype.kind == "f" and x.size > 0 and bool(np.isfinite(x).all())


def grid(x: NDArray[Any], bits: int) -> tuple[float, float]:
    """The per-array grid ``(offset, step)`` of ``x`` with ``2**bits`` points."""
    lo, hi = float(x.min()), float(x.max())
    return lo, (hi - lo) / (2**bits - 1)


def round_to_grid(
    x: NDArray[Any], bits: int, method: str, rng: np.random.Generator
) -> tuple[NDArray[np.int64], float, float]:
    """Grid indices of ``x`` (flattened), with the grid's offset and step."""
    lo, step = grid(x, bits)
    flat = x.astype(np.float64).ravel()
    if step == 0.0:
        return np.zeros(flat.size, np.int64), lo, step
    q = (flat - lo) / step
    k = ROUNDINGS.get(method)(q, rng)
    return np.clip(k, 0, 2**bits - 1).astype(np.int64), lo, step


def pack(k: NDArray[np.int64], bits: int) -> bytes:
    """``k`` (each ``< 2**bits``) as ``bits`` bits per value, least significant first."""
    if bits == 8:
        return k.astype(np.uint8).tobytes()
    planes = (k[:, None] >> np.arange(bits)) & 1
    return np.packbits(planes.astype(np.uint8).ravel(), bitorder="little").tobytes()


def unpack(data: bytes, bits: int, n: int) -> NDArray[np.int64]:
    """Inverse of :func:`pack` for ``n`` values."""
    raw = np.frombuffer(data, np.uint8)
    if bits == 8:
        return raw[:n].astype(np.int64)
    planes = np.unpackbits(raw, count=n * bits, bitorder="little").reshape(n, bits)
    return planes.astype(np.int64) @ (np.int64(1) << np.arange(bits, dtype=np.int64))


def payload_bytes(n: int, bits: int) -> int:
    """Bytes of a coded array of ``n`` values: header plus ``ceil(bits * n / 8)``."""
    return HEADER.size + math.ceil(bits * n / 8)


def encode_rounded(
    x: NDArray[Any], bits: int, method: str, rng: np.random.Generator, *, relative: bool = False
) -> Array:
    """Code ``x`` (see :func:`codable`) as a rounded, packed :class:`~flwr.app.Array`."""
    k, lo, step = round_to_grid(x, bits, method, rng)
    data = HEADER.pack(lo, step, bits, int(relative)) + pack(k, bits)
    return Array(dtype=str(x.dtype), shape=tuple(x.shape), stype=ROUNDED_STYPE, data=data)


def is_rounded(array: Array) -> bool:
    """Whether ``array`` was coded by :func:`encode_rounded`."""
    return array.stype == ROUNDED_STYPE


def decode_rounded(array: Array) -> tuple[NDArray[Any], bool]:
    """The decoded values of a coded array and whether they are relative to a reference."""
    lo, step, bits, relative = HEADER.unpack_from(array.data)
    n = math.prod(array.shape)
    k = unpack(array.data[HEADER.size :], bits, n)
    values = (lo + k * step).astype(np.dtype(array.dtype))
    return values.reshape(array.shape), bool(relative)
