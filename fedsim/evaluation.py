"""Loss and accuracy of a classifier on arrays (used by clients and the server)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from fedsim.training_device import model_device


@torch.no_grad()
def evaluate_model(
    model: nn.Module, x: NDArray[np.float32], y: NDArray[np.int64], batch_size: int = 512
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
        logits = model(xb)
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
