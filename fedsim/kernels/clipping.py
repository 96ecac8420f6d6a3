"""Public API: per-example gradient norms and the clipped gradient sum, in one pass.

One forward and one backward pass capture each layer's inputs and output gradients;
per-layer kernels turn them into per-example norms and then into the clipped sum by
re-weighting the stored output gradients (Lee & Kifer 2021). No unclipped weight
gradient is ever computed and no per-example gradient is stored unless a kernel finds
materialising it cheaper than a ghost norm.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from fedsim.kernels.capture import LossFn, backprop_per_example

# The clipping factor is min(1, C / (‖g‖ + EPS)), as in Opacus.
EPS = 1e-6


def per_example_grad_norms(
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Norms of the per-example gradients of ``loss_fn(model(inputs), targets)``.

    Parameters
    ----------
    model : nn.Module
        Any model whose layers have kernels (or a ``torch.func`` fallback).
    loss_fn : callable
        Returns one loss per example (``reduction="none"``), shape (B,).
    inputs, targets : Tensor
        A batch.

    Returns
    -------
    Tensor
        Shape (B,): ``‖∇_θ loss_fn(model(x_i), y_i)‖₂`` over all trainable parameters.
    """
    layers, records, _ = backprop_per_example(model, loss_fn, inputs, targets)
    return _norms(layers, records)


class ClipResult(NamedTuple):
    """Per-example gradient norms (B,) and per-example losses (B,) of one clipped pass."""

    norms: torch.Tensor
    losses: torch.Tensor


def clipped_gradient(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    max_norm: float,
) -> ClipResult:
    """Like :func:`clip_and_accumulate`, also returning the per-example losses."""
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    layers, records, losses = backprop_per_example(model, loss_fn, inputs, targets)
    norms = _norms(layers, records)
    coef = (max_norm / (norms + EPS)).clamp(max=1.0)
    for path, module, kernel in layers:
        kernel.accumulate(module, records[path], coef)
    return ClipResult(norms, losses)


def clip_and_accumulate(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    max_norm: float,
) -> torch.Tensor:
    """Set every ``p.grad`` to ``Σ_i min(1, C/(‖g_i‖ + 1e-6)) g_i``; return the norms (B,).

    Existing ``.grad`` values are replaced. Noise is not added here.
    """
    return clipped_gradient(model, loss_fn, inputs, targets, max_norm).norms


def _norms(layers: list, records: dict) -> torch.Tensor:  # type: ignore[type-arg]
    total = sum(kernel.norm_sq(module, records[path]) for path, module, kernel in layers)
    if not isinstance(total, torch.Tensor):
        raise ValueError("the model has no trainable parameters")
    return total.clamp(min=0).sqrt()
