"""``torch.func`` per-example gradients for layers without a kernel of their own.

The layer is re-run on each example's captured input under ``vmap(grad(...))`` with the
captured output gradient as the cotangent, so per-example gradients are materialised for
this one layer only. The same machinery over a whole model is the test oracle
(:mod:`fedsim.kernels.oracle`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedsim.kernels.registry import Kernel, Record, set_grad


def _layer_grads(module: nn.Module, record: Record) -> dict[str, torch.Tensor]:
    """Per-example gradients {name: (B, *shape)} of the module's own parameters."""
    cached: dict[str, torch.Tensor] | None = record.cache.get("g")
    if cached is not None:
        return cached
    params = {n: p.detach() for n, p in module.named_parameters(recurse=False)}
    total: dict[str, torch.Tensor] = {}
    for inputs, out_grad in zip(record.inputs, record.grads, strict=True):

        def inner(
            p: dict[str, torch.Tensor], args: tuple[Any, ...], d: torch.Tensor
        ) -> torch.Tensor:
            batched = tuple(a.unsqueeze(0) if isinstance(a, torch.Tensor) else a for a in args)
            out: torch.Tensor = functional_call(module, p, batched)
            return (out * d.unsqueeze(0)).sum()

        dims = tuple(0 if isinstance(a, torch.Tensor) else None for a in inputs)
        g = vmap(grad(inner), in_dims=(None, dims, 0))(params, inputs, out_grad)
        for n, v in g.items():
            total[n] = total[n] + v if n in total else v
    record.cache["g"] = total
    return total


class FuncKernel(Kernel):
    """Materialise per-example gradients of one layer with ``torch.func``."""

    def norm_sq(self, module: nn.Module, record: Record) -> torch.Tensor:
        """Sum of squared per-example gradient entries."""
        return sum(g.flatten(1).pow(2).sum(1) for g in _layer_grads(module, record).values())  # type: ignore[return-value]

    def accumulate(self, module: nn.Module, record: Record, coef: torch.Tensor) -> None:
        """``Σ_i coef_i g_i`` per parameter."""
        grads = _layer_grads(module, record)
        for name, p in module.named_parameters(recurse=False):
            set_grad(p, torch.tensordot(coef, grads[name], dims=1))


FALLBACK = FuncKernel()
