"""LayerNorm and GroupNorm: per-example gradients are small, so they are materialised.

For an affine normalisation ``y = x̂·γ + β``, example i's gradients are
``g_γ = Σ_positions Δ ⊙ x̂`` and ``g_β = Σ_positions Δ``, with ``x̂`` recomputed from
the captured input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.kernels.registry import Kernel, Record, register_kernel, set_grad


def _per_example(module: nn.Module, record: Record) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-example (γ, β) gradients, summed over the module's calls."""
    if "gw" in record.cache:
        return record.cache["gw"], record.cache["gb"]
    gw = gb = None
    for inputs, d in zip(record.inputs, record.grads, strict=True):
        x = inputs[0]
        if isinstance(module, nn.LayerNorm):
            xhat = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
            lead = tuple(range(1, x.dim() - len(module.normalized_shape)))
            w = (d * xhat).sum(lead) if lead else d * xhat
            b = d.sum(lead) if lead else d
        else:
            assert isinstance(module, nn.GroupNorm)
            xhat = F.group_norm(x, module.num_groups, None, None, module.eps)
            spatial = tuple(range(2, x.dim()))
            w, b = (d * xhat).sum(spatial), d.sum(spatial)
        gw = w if gw is None else gw + w
        gb = b if gb is None else gb + b
    assert gw is not None and gb is not None
    record.cache["gw"], record.cache["gb"] = gw.flatten(1), gb.flatten(1)
    return record.cache["gw"], record.cache["gb"]


@register_kernel(nn.LayerNorm, nn.GroupNorm)
class AffineNormKernel(Kernel):
    """Elementwise-affine LayerNorm / affine GroupNorm."""

    def norm_sq(self, module: nn.Module, record: Record) -> torch.Tensor:
        """``‖g_γ‖² + ‖g_β‖²`` per example (a missing β contributes nothing)."""
        gw, gb = _per_example(module, record)
        out = gw.pow(2).sum(1)
        if getattr(module, "bias", None) is not None and gb is not None:
            out = out + gb.pow(2).sum(1)
        return out

    def accumulate(self, module: nn.Module, record: Record, coef: torch.Tensor) -> None:
        """Weighted sums of the materialised per-example gradients."""
        gw, gb = _per_example(module, record)
        set_grad(module.weight, coef @ gw)
        if getattr(module, "bias", None) is not None and gb is not None:
            set_grad(module.bias, coef @ gb)
