"""The offline sharing plan of approximate gradient coding (AGC, DESIGN.md §6.1).

Each client's examples are split into private ones (kept by their owner alone) and a
fraction ``c`` of non-private ones; every non-private example is sent once, before
training, to ``d − 1`` other clients drawn at random, so that ``d`` distinct clients
hold it. The plan depends only on the partition (the ``data`` section and run seed),
``c``, ``d`` and the seed, so the server and every client compute the same plan alone:
nothing about it travels in messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from fedsim.config.schema import DataConfig
from fedsim.data.federated import FederatedData, federated_data

# Salt that keeps the plan's random stream apart from the partitioner's.
SHARING_SALT = 0x5A6C


@dataclass(frozen=True)
class SharingPlan:
    """Who holds which training example after the offline phase.

    Attributes
    ----------
    private : list of ndarray
        ``private[k]``: indices (into the run's training arrays) of client k's private
        examples; no other client holds them.
    nonprivate : list of ndarray
        ``nonprivate[k]``: indices of the examples client k owns and shares (``N_k``).
    shared : list of ndarray
        ``shared[k]``: indices of every non-private example client k holds (``S_k``):
        its own ``N_k`` plus those received.
    d : int
        Holders of each non-private example, owner included.
    bytes_per_example : int
        Bytes of one example (features plus label) on the wire.
    """

    private: list[NDArray[np.int64]]
    nonprivate: list[NDArray[np.int64]]
    shared: list[NDArray[np.int64]]
    d: int
    bytes_per_example: int

    @property
    def num_examples(self) -> int:
        """|D|: all training examples (private plus non-private, each counted once)."""
        return sum(len(p) + len(n) for p, n in zip(self.private, self.nonprivate, strict=True))

    @property
    def transfer_samples(self) -> int:
        """Examples sent in the offline phase: ``(d − 1)·Σ|N_k|``."""
        return sum(len(s) - len(n) for s, n in zip(self.shared, self.nonprivate, strict=True))

    def transfer_log(self) -> dict[str, int]:
        """The offline phase's cost, as written to ``sharing.json``."""
        return {
            "offline_nonprivate_samples": sum(len(n) for n in self.nonprivate),
            "offline_transfer_samples": self.transfer_samples,
            "offline_transfer_bytes": self.transfer_samples * self.bytes_per_example,
        }

    def held(self, k: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Client k's examples after the offline phase and how many clients hold each.

        The holder counts (1 for a private example, ``d`` for a non-private one) are
        what the coded step weighs by: ``1/(holders·(1−p))``, so that summing the
        encoded gradients of the clients that reply (each independently with
        probability ``1−p``) gives ``Σ_x g(x)`` in expectation.
        """
        idx = np.concatenate([self.private[k], self.shared[k]])
        holders = np.concatenate(
            [np.ones(len(self.private[k]), np.int64), np.full(len(self.shared[k]), self.d)]
        )
        return idx, holders


def make_plan(data: FederatedData, c: float, d: int, seed: int) -> SharingPlan:
    """Draw the sharing plan for ``data``.

    Client k marks ``round(c·|D_k|)`` of its examples, drawn at random, as non-private;
    each of them goes to ``d − 1`` distinct clients drawn uniformly from the others
    (a fresh draw per example).

    Raises
    ------
    ValueError
        If ``c`` is outside [0, 1] or ``d`` outside [1, number of clients].
    """
    num_clients = data.num_clients
    if not 0.0 <= c <= 1.0:
        raise ValueError(f"c must be in [0, 1], got {c}")
    if not 1 <= d <= num_clients:
        raise ValueError(f"d must be in [1, {num_clients}] (the number of clients), got {d}")
    rng = np.random.default_rng([seed, SHARING_SALT])
    private: list[NDArray[np.int64]] = []
    nonprivate: list[NDArray[np.int64]] = []
    received: list[list[NDArray[np.int64]]] = [[] for _ in range(num_clients)]
    for k, part in enumerate(data.parts):
        marked = rng.permutation(len(part))[: round(c * len(part))]
        mask = np.zeros(len(part), dtype=bool)
        mask[marked] = True
        private.append(np.sort(part[~mask]))
        nonprivate.append(np.sort(part[mask]))
        others = np.delete(np.arange(num_clients), k)  # (K-1,)
        # One uniformly random ordering of the other clients per example; keep d-1.
        picks = others[rng.random((int(mask.sum()), num_clients - 1)).argsort(axis=1)[:, : d - 1]]
        for target in others:  # a row's picks are distinct clients
            received[target].append(nonprivate[k][(picks == target).any(axis=1)])
    shared = [
        np.sort(np.concatenate([nonprivate[k], *received[k]])).astype(np.int64)
        for k in range(num_clients)
    ]
    per_example = int(data.x[0].nbytes + data.y[0].nbytes) if len(data.y) else 0
    return SharingPlan(private, nonprivate, shared, d, per_example)


@lru_cache(maxsize=8)
def sharing_plan(cfg: DataConfig, seed: int) -> SharingPlan:
    """The run's plan (``data.sharing``; none: every example private), once per process."""
    c, d = (cfg.sharing.c, cfg.sharing.d) if cfg.sharing is not None else (0.0, 1)
    return make_plan(federated_data(cfg, seed), c, d, seed)
