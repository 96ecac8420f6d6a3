"""Loss and accuracy of a classifier on arrays (used by clients and the server).

``logit_shift`` is post-hoc logit adjustment (Menon et al. 2021): a per-class vector
added to every logit before the loss and the prediction, ``-tau * log(prior)`` for
``output.eval_logit_adjust``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from fedsim.label_prior import shift_logits
from fedsim.training_device import model_device


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    batch_size: int = 512,
    *,
    logit_shift: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Return (mean cross-entropy, accuracy) of ``model`` on ``(x, y)``.

    Both are per target: per example for classification, per position for sequence
    targets (a language model's loss is then per token; perplexity = exp(loss)). A model
    whose outputs are not finite has no accuracy: both are NaN (argmax of NaN logits
    would otherwise "predict" class 0 and score its share of the labels).
    """
    model.eval()
    device = model_device(model)
    total_loss, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb = torch.from_numpy(x[start : start + batch_size]).to(device)
        yb = torch.from_numpy(y[start : start + batch_size]).to(device)
        logits = model(xb) if logit_shift is None else shift_logits(model(xb), logit_shift)
        if not bool(torch.isfinite(logits).all()):
            return math.nan, math.nan
        total_loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(dim=1) == yb).sum())
    n = max(y.size, 1)
    return total_loss / n, correct / n


@torch.no_grad()
def per_example_scores(
    model: nn.Module, x: NDArray[np.float32], y: NDArray[np.int64], batch_size: int = 512
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Return each example's cross-entropy and accuracy (means over a sequence's targets)."""
    model.eval()
    device = model_device(model)
    losses, correct = [], []
    for start in range(0, len(y), batch_size):
        xb = torch.from_numpy(x[start : start + batch_size]).to(device)
        yb = torch.from_numpy(y[start : start + batch_size]).to(device)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb, reduction="none")
        hit = (logits.argmax(dim=1) == yb).to(torch.float64)
        losses.append(loss.reshape(len(yb), -1).mean(dim=1).double().cpu().numpy())
        correct.append(hit.reshape(len(yb), -1).mean(dim=1).cpu().numpy())
    empty = np.empty(0, dtype=np.float64)
    return (
        np.concatenate(losses) if losses else empty,
        np.concatenate(correct) if correct else empty,
    )


@torch.no_grad()
def class_recall(
    model: nn.Module,
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    num_classes: int,
    batch_size: int = 512,
    *,
    logit_shift: torch.Tensor | None = None,
) -> list[float | None]:
    """Return each class's recall (share of its targets predicted as it; None: absent).

    Sequence targets count every position.
    """
    model.eval()
    device = model_device(model)
    hits = np.zeros(num_classes, dtype=np.int64)
    for start in range(0, len(y), batch_size):
        xb = torch.from_numpy(x[start : start + batch_size]).to(device)
        yb = y[start : start + batch_size]
        logits = model(xb) if logit_shift is None else shift_logits(model(xb), logit_shift)
        predicted = logits.argmax(dim=1).cpu().numpy()
        hits += np.bincount(yb[predicted == yb], minlength=num_classes)
    counts = np.bincount(y.ravel(), minlength=num_classes)
    return [float(h / n) if n else None for h, n in zip(hits, counts, strict=True)]


@torch.no_grad()
def mean_squared_error(
    model: nn.Module, x: NDArray[np.float32], y: NDArray[Any], batch_size: int = 512
) -> float:
    """Return the mean of ``(f(x) - y)²`` of a one-output model on regression targets."""
    model.eval()
    device = model_device(model)
    total = 0.0
    for start in range(0, len(y), batch_size):
        xb = torch.from_numpy(x[start : start + batch_size]).to(device)
        out = model(xb).double().cpu().reshape(-1)
        target = torch.from_numpy(y[start : start + batch_size]).double()
        total += float(((out - target) ** 2).sum())
    return total / max(len(y), 1)
