"""Real-valued linear erasure codes over the clients, and the peeling decoder.

A code of length ``n`` (one symbol per client) and dimension ``k`` is a generator
``G`` (n x k) and a sparse parity-check matrix ``H`` (m x n) with ``H G = 0``; the
symbols are ``c = G s`` for ``k`` source symbols ``s`` (vectors), and the source symbol
``i`` is the coded symbol at position ``info[i]`` (systematic codes: ``G[info] = I``).

Three codes share the decoder:

* ``ldpc``: a random ``(column_weight, row_weight)``-regular parity-check matrix
  (configuration model, no repeated edges) with random nonzero real weights; its
  systematic form puts the source symbols at positions whose columns leave the
  remaining ``m`` columns of ``H`` invertible (Maity, Rawat and Mazumdar, "Robust
  gradient descent via moment encoding and LDPC codes": the construction of the weights
  and of the systematic form is fedsim's own reconstruction);
* ``replication``: each source symbol held by ``replicas`` clients (checks say two
  replicas are equal);
* ``uncoded``: ``G = I``, no checks.

The peeling decoder repeats: a check with exactly one erased symbol solves for it. It
stops when no check can, or after a cap on the iterations; the source symbols still
missing are reported (the caller treats them as dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class ErasureCode:
    """A systematic real linear code over ``n`` clients.

    Attributes
    ----------
    generator : ndarray
        ``G``, shape (n, k): symbol ``j`` is ``Σ_i G[j, i] s_i``.
    checks : ndarray
        ``H``, shape (m, n), ``H G = 0`` (m may be 0).
    info : ndarray
        Position of each source symbol among the ``n`` coded ones, shape (k,).
    """

    generator: NDArray[np.float64]
    checks: NDArray[np.float64]
    info: NDArray[np.int64]

    @property
    def n(self) -> int:
        """Code length (clients)."""
        return int(self.generator.shape[0])

    @property
    def k(self) -> int:
        """Dimension (source symbols)."""
        return int(self.generator.shape[1])


@dataclass(frozen=True)
class Decoded:
    """What the peeling decoder recovered.

    Attributes
    ----------
    source : ndarray
        The source symbols, shape (k, r); zero rows where ``missing``.
    missing : ndarray
        Indices of the source symbols that could not be recovered.
    iterations : int
        Peeling passes taken.
    """

    source: NDArray[np.float64]
    missing: NDArray[np.int64]
    iterations: int


def uncoded(n: int) -> ErasureCode:
    """Every client holds its own source symbol; nothing is recoverable from others."""
    return ErasureCode(np.eye(n), np.zeros((0, n)), np.arange(n))


def replication(n: int, replicas: int) -> ErasureCode:
    """Source symbol ``i`` held by clients ``i, i + k, i + 2k, ...`` (``k = n / replicas``)."""
    if replicas < 1 or n % replicas:
        raise ValueError(f"replicas must divide the {n} clients, got {replicas}")
    k = n // replicas
    generator = np.tile(np.eye(k), (replicas, 1))
    rows = []
    for j in range(k, n):  # each later replica equals the first
        row = np.zeros(n)
        row[j % k], row[j] = 1.0, -1.0
        rows.append(row)
    return ErasureCode(generator, np.array(rows).reshape(-1, n), np.arange(k))


def regular_checks(
    n: int, column_weight: int, row_weight: int, rng: np.random.Generator, tries: int = 100
) -> NDArray[np.float64]:
    """Draw a random regular parity-check matrix with weights ``±U[1, 2]``.

    Each column has ``column_weight`` nonzeros, each row ``row_weight``.

    Raises
    ------
    ValueError
        If ``n * column_weight`` is not a multiple of ``row_weight``, or the swaps
        (``tries`` per socket) leave a check holding a client twice.
    """
    if (n * column_weight) % row_weight or row_weight > n:
        raise ValueError(
            f"column_weight x clients ({column_weight} x {n}) must be a multiple of "
            f"row_weight ({row_weight}), and row_weight at most the clients"
        )
    m = n * column_weight // row_weight
    # Configuration model: deal every client's column_weight sockets to the checks, then
    # swap sockets between checks until no check holds a client twice.
    sockets = rng.permutation(np.repeat(np.arange(n), column_weight)).reshape(m, row_weight)
    for _ in range(tries * m * row_weight):
        repeated = [(r, int(pos)) for r in range(m) for pos in np.flatnonzero(_repeats(sockets[r]))]
        if not repeated:
            break
        r, pos = repeated[int(rng.integers(len(repeated)))]
        r2, pos2 = int(rng.integers(m)), int(rng.integers(row_weight))
        a, b = sockets[r, pos], sockets[r2, pos2]
        if r2 != r and a not in sockets[r2] and b not in sockets[r]:
            sockets[r, pos], sockets[r2, pos2] = b, a
    else:
        raise ValueError(
            f"no ({column_weight}, {row_weight})-regular code on {n} clients was found"
        )
    h = np.zeros((m, n))
    for r, cols in enumerate(sockets):
        h[r, cols] = rng.uniform(1.0, 2.0, row_weight) * rng.choice([-1.0, 1.0], row_weight)
    return h


def _repeats(row: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Which entries repeat an earlier entry of ``row``."""
    _, first = np.unique(row, return_index=True)
    out = np.ones(len(row), dtype=bool)
    out[first] = False
    return out


def systematic(checks: NDArray[np.float64]) -> ErasureCode:
    """The systematic code of parity-check matrix ``checks``.

    Parity positions are picked greedily (a column joins if it raises the rank); the
    source symbols sit at the others, and the parities are ``-H_P⁺ H_I s``. Dependent
    checks lower the rank and raise ``k`` to ``n - rank``.
    """
    m, n = checks.shape
    parity: list[int] = []
    for j in range(n):
        trial = [*parity, j]
        if np.linalg.matrix_rank(checks[:, trial]) == len(trial):
            parity = trial
        if len(parity) == m:
            break
    info = np.array([j for j in range(n) if j not in parity], dtype=np.int64)
    generator = np.zeros((n, len(info)))
    generator[info, np.arange(len(info))] = 1.0
    # H_P c_P + H_I c_I = 0 with H_P of full column rank: c_P = -pinv(H_P) H_I c_I.
    generator[parity] = -np.linalg.pinv(checks[:, parity]) @ checks[:, info]
    return ErasureCode(generator, checks, info)


def ldpc(n: int, column_weight: int, row_weight: int, seed: int) -> ErasureCode:
    """A seeded ``(column_weight, row_weight)``-regular LDPC code over ``n`` clients."""
    rng = np.random.default_rng([seed, 0x1D9C])
    return systematic(regular_checks(n, column_weight, row_weight, rng))


def peel(
    code: ErasureCode,
    symbols: NDArray[np.float64],
    received: NDArray[np.bool_],
    max_iterations: int = 100,
) -> Decoded:
    """Recover erased symbols with the checks, one unknown per check at a time.

    Parameters
    ----------
    code : ErasureCode
        The code.
    symbols : ndarray
        Shape (n, r): the coded symbols (rows where not ``received`` are ignored).
    received : ndarray of bool
        Shape (n,): which symbols arrived.
    max_iterations : int
        Cap on the passes over the checks.
    """
    values = np.where(received[:, None], symbols, 0.0).astype(np.float64)
    known = received.copy()
    h = code.checks
    iterations = 0
    while iterations < max_iterations and not known.all():
        progress = False
        for row in h:
            support = np.flatnonzero(row)
            unknown = support[~known[support]]
            if len(unknown) != 1:
                continue
            j = int(unknown[0])
            others = support[known[support]]
            values[j] = -(row[others] @ values[others]) / row[j]
            known[j] = True
            progress = True
        iterations += 1
        if not progress:
            break
    source = values[code.info].copy()
    missing = np.flatnonzero(~known[code.info]).astype(np.int64)
    source[missing] = 0.0
    return Decoded(source, missing, iterations)
