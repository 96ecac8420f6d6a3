"""Noisy training labels (``data.label_noise``), drawn from the run seed.

The noise is exact per class, not a Bernoulli draw per example: of the ``n_c`` training
examples of class ``c``, ``round(rate * n_c)`` chosen at random are flipped
(``symmetric``: each to a uniformly drawn other class; ``pairflip``: to ``c + 1 mod C``).
With ``kind: matrix`` the ``n_c`` examples are apportioned to the target classes by row
``c`` of the matrix (largest remainders), so class ``c`` sends exactly
``round``-ed ``T[c, j] * n_c`` examples to class ``j``. It is applied to the pooled
training labels after the partition was drawn (which partitions by the true labels), so
the split and the test set are the same as without noise.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from fedsim.config.schema import LabelNoiseConfig
from fedsim.errors import Problem, ScenarioError

NOISE_SEED_TAG = 0x4E015E  # separates the noise draws from the partition's


def _apportion(share: NDArray[np.float64], n: int) -> NDArray[np.int64]:
    """Integer counts summing to ``n`` closest to ``share * n`` (largest remainders)."""
    exact = share * n
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - int(counts.sum())]] += 1
    return counts


def _transition(cfg: LabelNoiseConfig, num_classes: int) -> NDArray[np.float64]:
    """Row ``c``: the share of class ``c``'s examples sent to each class."""
    if cfg.kind == "matrix":
        matrix = np.asarray(cfg.matrix, dtype=np.float64)
        if matrix.shape != (num_classes, num_classes):
            raise ScenarioError(
                [
                    Problem(
                        "data.label_noise.matrix",
                        f"must be {num_classes} x {num_classes} (the dataset's classes), "
                        f"got {matrix.shape[0]} x {matrix.shape[0]}",
                    )
                ]
            )
        return matrix
    eye = np.eye(num_classes)  # pairflip: class c to c + 1 mod C
    return (1 - cfg.rate) * eye + cfg.rate * np.roll(eye, 1, axis=1)


def noisy_labels(
    y: NDArray[np.int64], num_classes: int, cfg: LabelNoiseConfig, seed: int
) -> NDArray[np.int64]:
    """Return a copy of the training labels ``y`` with the configured noise.

    ``symmetric`` and ``pairflip`` flip exactly ``round(rate * n_c)`` examples of each
    class ``c``; the symmetric targets are drawn uniformly among the other classes.
    """
    if y.ndim != 1:
        raise ScenarioError(
            [Problem("data.label_noise", "needs one class label per example (not sequences)")]
        )
    rng = np.random.default_rng([seed, NOISE_SEED_TAG])
    noisy = y.copy()
    if num_classes < 2:  # nothing to flip to
        return noisy
    if cfg.kind == "symmetric":
        for c in range(num_classes):
            members = np.flatnonzero(y == c)
            flipped = rng.permutation(members)[: round(cfg.rate * len(members))]
            # A uniform other class: 1..C-1 added modulo C.
            noisy[flipped] = (c + rng.integers(1, num_classes, len(flipped))) % num_classes
        return noisy
    matrix = _transition(cfg, num_classes)
    for c in range(num_classes):
        members = rng.permutation(np.flatnonzero(y == c))
        counts = _apportion(matrix[c], len(members))
        noisy[members] = np.repeat(np.arange(num_classes), counts)
    return noisy


def flipped_per_client(
    y_true: NDArray[np.int64], y_noisy: NDArray[np.int64], parts: list[NDArray[np.int64]]
) -> list[dict[str, int]]:
    """Per client: its examples and how many of their labels the noise changed."""
    return [
        {"client": k, "examples": len(idx), "flipped": int((y_true[idx] != y_noisy[idx]).sum())}
        for k, idx in enumerate(parts)
    ]
