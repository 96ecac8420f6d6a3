"""The one local training loop; algorithms change it only through a :class:`LocalStep`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fedsim.clients.optimizers import make_optimizer
from fedsim.clients.steps import LocalStep
from fedsim.scenario import ClientConfig


@dataclass(frozen=True)
class TrainResult:
    """What one local training job did.

    Attributes
    ----------
    mean_loss : float
        Mean training loss over every example processed.
    samples : int
        Examples processed (an example seen in two epochs counts twice).
    steps : int
        Optimizer steps taken.
    """

    mean_loss: float
    samples: int
    steps: int


def num_local_steps(num_examples: int, cfg: ClientConfig) -> int:
    """Return the optimizer steps one job takes (``local_steps`` or epochs x batches)."""
    if cfg.local_steps is not None:
        return cfg.local_steps
    return cfg.local_epochs * math.ceil(num_examples / min(cfg.batch_size, num_examples))


def train_local(
    model: nn.Module,
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    cfg: ClientConfig,
    step: LocalStep,
    generator: torch.Generator,
) -> TrainResult:
    """Train ``model`` in place on ``(x, y)`` with the injected ``step``.

    Mini-batches come from reshuffles of the local data drawn from ``generator``; the
    job takes :func:`num_local_steps` optimizer steps.
    """
    model.train()
    optimizer = make_optimizer(model.parameters(), cfg.optimizer)
    n = len(y)
    batch = min(cfg.batch_size, n)
    total_steps = num_local_steps(n, cfg)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loss_sum, samples, taken = 0.0, 0, 0
    while taken < total_steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch):
            if taken == total_steps:
                break
            idx = order[start : start + batch]
            xb, yb = xt[idx], yt[idx]
            optimizer.zero_grad(set_to_none=True)
            per_example = step.data_loss(model(xb), yb)  # (B,)
            loss = per_example.mean()
            penalty = step.penalty(model)
            if penalty is not None:
                loss = loss + penalty
            loss.backward()
            optimizer.step()
            loss_sum += float(per_example.detach().sum())
            samples += len(idx)
            taken += 1
    return TrainResult(mean_loss=loss_sum / max(samples, 1), samples=samples, steps=taken)
