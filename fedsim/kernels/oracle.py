"""Reference per-example gradients, computed the slow and obvious way.

Used by the tests (and the benchmark's example-by-example baseline): a ``torch.func``
``vmap(grad)`` over the whole model where the model allows it, and a plain loop over
batches of one with ordinary autograd for anything (fedsim's LSTM included).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedsim.kernels.capture import LossFn


def per_example_grads_loop(
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor
) -> dict[str, torch.Tensor]:
    """{name: (B, *shape)} by one backward pass per example."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    out: dict[str, list[torch.Tensor]] = {n: [] for n in params}
    for i in range(inputs.shape[0]):
        model.zero_grad(set_to_none=True)
        loss_fn(model(inputs[i : i + 1]), targets[i : i + 1]).sum().backward()
        for n, p in params.items():
            out[n].append(torch.zeros_like(p) if p.grad is None else p.grad.detach().clone())
    model.zero_grad(set_to_none=True)
    return {n: torch.stack(v) for n, v in out.items()}


def per_example_grads_func(
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor
) -> dict[str, torch.Tensor]:
    """{name: (B, *shape)} with ``torch.func.vmap(grad(...))`` over the whole model."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def one(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, p, (x.unsqueeze(0),)), y.unsqueeze(0)).sum()

    return vmap(grad(one), in_dims=(None, 0, 0))(params, inputs, targets)  # type: ignore[no-any-return]


def norms_of(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-example norms (B,) of a {name: (B, ...)} mapping."""
    return torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))  # type: ignore[arg-type]


def clipped_sum_of(grads: dict[str, torch.Tensor], max_norm: float) -> dict[str, torch.Tensor]:
    """``Σ_i min(1, C/(‖g_i‖ + 1e-6)) g_i`` per parameter."""
    coef = (max_norm / (norms_of(grads) + 1e-6)).clamp(max=1.0)
    return {n: torch.tensordot(coef, g, dims=1) for n, g in grads.items()}
