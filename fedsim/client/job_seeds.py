"""The seeds of many jobs at once, equal to :func:`fedsim.client.job.job_seed` one by one.

A job's seed is ``SeedSequence([run seed, partition, round, purpose]).generate_state(1)``.
numpy builds one ``SeedSequence`` per call (~5 µs), which a round of a hundred clients
trained together (:mod:`fedsim.client.stacked`) pays a hundred times. Here numpy's
algorithm (O'Neill's seed_seq hash as numpy's ``bit_generator.pyx`` implements it: pool
of four 32-bit words, ``hashmix``, ``mix``, then ``generate_state``) runs on arrays, one
job per lane. Inputs outside one 32-bit word each go to ``job_seed`` itself. A test
compares both on many inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from fedsim.client.job import job_seed

# numpy's SeedSequence constants.
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715
_MASK32 = 0xFFFFFFFF
_POOL = 4  # numpy's default pool size: the four words fill it exactly
_SHIFT = np.uint32(16)

U32 = NDArray[np.uint32]


class _Hash:
    """numpy's ``hashmix`` with its running multiplier (the same for every lane)."""

    def __init__(self) -> None:
        self.const = _INIT_A

    def __call__(self, value: U32) -> U32:
        value = value ^ np.uint32(self.const)
        self.const = (self.const * _MULT_A) & _MASK32
        value = value * np.uint32(self.const)
        return value ^ (value >> _SHIFT)


def _mix(x: U32, y: U32) -> U32:
    result: U32 = np.uint32(_MIX_MULT_L) * x - np.uint32(_MIX_MULT_R) * y
    return result ^ (result >> _SHIFT)


def job_seeds(
    run_seed: int, partition_ids: Sequence[int], server_round: int, purpose: int
) -> list[int]:
    """``[job_seed(run_seed, p, server_round, purpose) for p in partition_ids]``."""
    ids = np.asarray(partition_ids, dtype=np.int64)
    fixed = (run_seed, server_round, purpose)
    if not all(0 <= w <= _MASK32 for w in fixed) or ((ids < 0) | (ids > _MASK32)).any():
        return [job_seed(run_seed, int(p), server_round, purpose) for p in partition_ids]
    lanes = len(ids)
    words = [
        np.full(lanes, run_seed, dtype=np.uint32),
        ids.astype(np.uint32),
        np.full(lanes, server_round, dtype=np.uint32),
        np.full(lanes, purpose, dtype=np.uint32),
    ]
    hashmix = _Hash()
    with np.errstate(over="ignore"):  # 32-bit wraparound is the algorithm
        pool = [hashmix(w) for w in words[:_POOL]]
        for src in range(_POOL):
            for dst in range(_POOL):
                if src != dst:
                    pool[dst] = _mix(pool[dst], hashmix(pool[src]))
        # generate_state(1): the first pool word, hashed with the output constants.
        const = (_INIT_B * _MULT_B) & _MASK32
        value = (pool[0] ^ np.uint32(_INIT_B)) * np.uint32(const)
        value = value ^ (value >> _SHIFT)
    return [int(v) for v in value.tolist()]
