"""The erasure codes and the peeling decoder on constructed cases."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.erasure_code import ErasureCode, ldpc, peel, regular_checks, replication, uncoded


def _symbols(code: ErasureCode, r: int = 3) -> tuple[np.ndarray, np.ndarray]:
    source = np.random.default_rng(0).standard_normal((code.k, r))
    return source, code.generator @ source


def test_ldpc_is_regular_and_a_code() -> None:
    code = ldpc(20, 3, 6, seed=1)
    support = code.checks != 0
    assert (support.sum(0) == 3).all() and (support.sum(1) == 6).all()
    assert np.allclose(code.checks @ code.generator, 0.0, atol=1e-10)
    assert np.allclose(code.generator[code.info], np.eye(code.k))
    assert code.k == 20 - np.linalg.matrix_rank(code.checks)


def test_peeling_recovers_every_block_when_decodable() -> None:
    """One erasure per check it touches: a single pass solves each."""
    code = ldpc(20, 3, 6, seed=1)
    source, coded = _symbols(code)
    received = np.ones(20, dtype=bool)
    received[code.info[:2]] = False  # two source blocks lost
    decoded = peel(code, coded, received)
    assert decoded.missing.size == 0
    assert np.allclose(decoded.source, source, atol=1e-10)


def test_peeling_chains_through_checks() -> None:
    """Hand-made code: s0 = c0 - c2 needs c1 first; c1 is recovered from a second check.

    Checks: c0 - c1 - c2 = 0 and c1 - c3 = 0 (c3 replicates c1). Losing c0 and c1: the
    first check has two unknowns until the second gives c1 = c3; then c0 = c1 + c2.
    """
    h = np.array([[1.0, -1.0, -1.0, 0.0], [0.0, 1.0, 0.0, -1.0]])
    g = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # source (s0, s1)
    code = ErasureCode(g, h, np.array([1, 2]))
    source = np.array([[2.0], [5.0]])
    coded = g @ source
    decoded = peel(code, coded, np.array([False, False, True, True]))
    assert decoded.missing.size == 0 and decoded.iterations == 2
    assert np.allclose(decoded.source, source)


def test_peeling_reports_residual_erasures() -> None:
    """A stopping set: both replicas of a block lost leaves it missing (zeroed)."""
    code = replication(6, 2)  # blocks 0,1,2 at clients {0,3}, {1,4}, {2,5}
    source, coded = _symbols(code)
    received = np.array([False, True, True, False, True, True])
    decoded = peel(code, coded, received)
    assert decoded.missing.tolist() == [0]
    assert np.allclose(decoded.source[1:], source[1:])
    assert (decoded.source[0] == 0).all()
    # The cap: no pass at all leaves the erased source block missing.
    again = peel(code, coded, np.array([False, True, True, True, True, True]), max_iterations=0)
    assert again.missing.tolist() == [0]


def test_uncoded_drops_what_does_not_arrive() -> None:
    code = uncoded(4)
    source, coded = _symbols(code)
    decoded = peel(code, coded, np.array([True, False, True, True]))
    assert decoded.missing.tolist() == [1]
    assert np.allclose(decoded.source[[0, 2, 3]], source[[0, 2, 3]])


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="multiple"):
        regular_checks(10, 3, 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="divide"):
        replication(5, 2)
