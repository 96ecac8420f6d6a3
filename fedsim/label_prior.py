"""Label priors: class frequencies of training labels, for logit adjustment.

Used by the logit-adjusted client loss (:mod:`fedsim.client.losses`) and by post-hoc
adjustment of central evaluation (``output.eval_logit_adjust``). A class with no
examples gets the prior ``MIN_PRIOR``, so its log prior is very low but finite.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

MIN_PRIOR = 1e-12


def label_counts(y: NDArray[np.int64], num_classes: int) -> NDArray[np.int64]:
    """Return how many targets of each class ``y`` holds (sequences: every position)."""
    return np.bincount(y.ravel(), minlength=num_classes).astype(np.int64)


def log_prior(counts: NDArray[np.int64], num_classes: int) -> torch.Tensor:
    """Return ``log(counts / sum)`` over ``num_classes`` classes, float32 ``(C,)``."""
    full = np.zeros(num_classes, dtype=np.float64)
    given = counts[:num_classes]
    full[: len(given)] = given
    prior = full / max(full.sum(), 1.0)
    return torch.from_numpy(np.log(np.maximum(prior, MIN_PRIOR))).float()


def shift_logits(logits: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``logits`` plus the per-class ``shift`` ``(C,)`` along the class axis 1.

    Logits are ``(B, C)`` or, for sequence targets, ``(B, C, T)``.
    """
    shaped = shift.reshape(1, -1, *([1] * (logits.dim() - 2)))
    return logits + shaped.to(device=logits.device, dtype=logits.dtype)
