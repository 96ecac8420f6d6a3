"""Rounded, packed arrays: unbiased randomized rounding, biased deterministic rounding,
payloads of exactly header + bits·n/8 bytes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ArrayRecord

from fedsim.rounding import (
    HEADER,
    decode_rounded,
    encode_rounded,
    grid,
    pack,
    payload_bytes,
    unpack,
)


def _draws(x: np.ndarray, bits: int, method: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([decode_rounded(encode_rounded(x, bits, method, rng))[0] for _ in range(n)])


def _fractions(x: np.ndarray, bits: int) -> tuple[np.ndarray, float]:
    """f = frac((x - lo) / step) per coordinate, and the step, computed here in float64."""
    lo, hi = float(x.min()), float(x.max())
    step = (hi - lo) / (2**bits - 1)
    q = (x.astype(np.float64) - lo) / step
    return q - np.floor(q), step


def test_randomized_rounding_is_unbiased_in_every_coordinate() -> None:
    """Each coordinate's mean over N draws is within 3σ of the input, σ = step·√(f(1−f)/N)."""
    x = np.random.default_rng(1).normal(size=40).astype(np.float32)
    n = 3000
    draws = _draws(x, 2, "randomized-rounding", n).astype(np.float64)
    f, step = _fractions(x, 2)
    sigma = step * np.sqrt(f * (1 - f) / n)
    err = np.abs(draws.mean(axis=0) - x)
    # float32 decoding adds at most a few ulps where f is 0 (σ = 0 there).
    assert (err <= 3 * sigma + 1e-6).all(), err - 3 * sigma


def test_randomized_rounding_error_variance_is_the_closed_form() -> None:
    """Var(x̂ − x) = step² · f (1 − f) per coordinate; checked in total over 40 coordinates."""
    x = np.random.default_rng(2).uniform(-1, 1, size=40).astype(np.float32)
    draws = _draws(x, 3, "randomized-rounding", 3000, seed=5).astype(np.float64)
    f, step = _fractions(x, 3)
    expected = step**2 * f * (1 - f)
    measured = draws.var(axis=0)
    assert measured.sum() == pytest.approx(expected.sum(), rel=0.03)
    # and coordinate by coordinate, loosely (each is a 3,000-draw estimate)
    assert np.abs(measured - expected).max() < 0.15 * step**2


def test_deterministic_rounding_is_biased_on_a_quarter_step() -> None:
    """Grid 0, 1/3, 2/3, 1 (2 bits on [0, 1]); 1/12 is a quarter step above 0.

    Deterministic rounding always decodes 1/12 to 0 (bias −1/12); randomized rounding's
    mean is 1/12 (3 · 1/12 = 1/4 chance of 1/3).
    """
    x = np.array([0.0, 1.0] + [1 / 12] * 8, dtype=np.float32)
    det = _draws(x, 2, "deterministic-rounding", 200)
    assert (det[:, 2:] == 0.0).all()
    rnd = _draws(x, 2, "randomized-rounding", 4000)
    assert rnd[:, 2:].mean() == pytest.approx(1 / 12, abs=0.004)
    assert abs(det[:, 2:].mean() - 1 / 12) > 0.08


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 7, 8, 12, 16])
@pytest.mark.parametrize("n", [1, 5, 64, 1001])
def test_payload_is_header_plus_packed_bits(bits: int, n: int) -> None:
    x = np.random.default_rng(n).normal(size=n).astype(np.float32)
    array = encode_rounded(x, bits, "randomized-rounding", np.random.default_rng(0))
    assert len(array.data) == HEADER.size + math.ceil(bits * n / 8) == payload_bytes(n, bits)
    assert ArrayRecord({"w": array}).count_bytes() == payload_bytes(n, bits) + len("w")
    assert array.dtype == "float32" and array.shape == (n,)


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 11, 16])
def test_pack_round_trips(bits: int) -> None:
    k = np.random.default_rng(bits).integers(0, 2**bits, size=777)
    assert (unpack(pack(k, bits), bits, k.size) == k).all()


def test_decoded_values_are_grid_points_of_the_input_range() -> None:
    x = np.random.default_rng(3).normal(size=(5, 7)).astype(np.float32)
    value, relative = decode_rounded(
        encode_rounded(x, 4, "randomized-rounding", np.random.default_rng(0), relative=True)
    )
    lo, step = grid(x, 4)
    k = (value.astype(np.float64) - lo) / step
    assert relative and value.shape == x.shape and value.dtype == np.float32
    assert np.allclose(k, np.round(k), atol=1e-4) and k.min() >= -1e-4 and k.max() <= 15 + 1e-4
    assert np.abs(value - x).max() <= step * (1 + 1e-5)  # never further than one step


def test_a_constant_array_decodes_exactly() -> None:
    x = np.full(9, 0.25, dtype=np.float32)
    value, _ = decode_rounded(encode_rounded(x, 2, "randomized-rounding", np.random.default_rng()))
    assert (value == x).all()
