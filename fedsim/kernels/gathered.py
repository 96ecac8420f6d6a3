"""Linear maps of structurally dropped sequences, computed on the kept columns only.

Structured dropout (Sarma et al. 2021) drops whole hidden units for the whole batch,
with a fresh mask every time step: at step t the input ``x_t`` (B, H) is zero outside
the kept set ``K_t`` and scaled by ``1/(1-p)`` inside it. A layer consuming it then
needs only ``x_t[:, K_t]`` and ``W[:, K_t]``, so its forward GEMM and both backward GEMMs
(data and weight gradient) shrink by the keep ratio. :func:`gathered_linear` does that
per time step, with its own backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import FunctionCtx


def draw_keep_masks(
    layers: int, steps: int, hidden: int, p: float, device: torch.device | None = None
) -> torch.Tensor:
    """Boolean keep masks (layers, T, H) from torch's RNG: shared by the batch."""
    return torch.rand(layers, steps, hidden, device=device) >= p


class _GatheredLinear(torch.autograd.Function):
    """``y_t = (scale · x_t[:, K_t]) W[:, K_t]ᵀ + b`` for every step t, time major out."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: torch.Tensor,  # (B, T, H); columns outside K_t are never read
        keep: torch.Tensor,  # (T, H) bool
        weight: torch.Tensor,  # (out, H)
        bias: torch.Tensor | None,  # (out,)
        scale: float,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        idx = [torch.nonzero(keep[s]).flatten() for s in range(t)]
        out = x.new_empty(t, b, weight.shape[0])
        # (H, out), contiguous once per call: each step then gathers whole rows (memcpy)
        # instead of striding through W's columns.
        wt = weight.t().contiguous()
        for s in range(t):
            xs = x[:, s].index_select(1, idx[s]).mul_(scale)  # (B, k_t)
            ws = wt.index_select(0, idx[s])  # (k_t, out)
            if bias is None:
                torch.mm(xs, ws, out=out[s])
            else:
                torch.addmm(bias, xs, ws, out=out[s])
        ctx.save_for_backward(x, wt)
        ctx.idx, ctx.scale, ctx.has_bias = idx, scale, bias is not None  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, wt = ctx.saved_tensors
        idx, scale = ctx.idx, ctx.scale
        dx = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        dwt = torch.zeros_like(wt) if ctx.needs_input_grad[2] else None
        for s in range(x.shape[1]):
            d = d_out[s]  # (B, out)
            if dx is not None:  # (B, k_t): the data-gradient GEMM, shrunk
                dx[:, s].index_copy_(1, idx[s], (d @ wt.index_select(0, idx[s]).t()).mul_(scale))
            if dwt is not None:  # (k_t, out): the weight-gradient GEMM, shrunk
                xs = x[:, s].index_select(1, idx[s]).mul_(scale)
                dwt.index_add_(0, idx[s], xs.t() @ d)
        db = d_out.sum((0, 1)) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return dx, None, None if dwt is None else dwt.t(), db, None


def gathered_linear(
    x: torch.Tensor,
    keep: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """``scale · (x ⊙ keep) Wᵀ + b`` computed on kept columns only, time major (T, B, out).

    Parameters
    ----------
    x : Tensor
        (B, T, H) inputs; only the kept columns of each step are read.
    keep : Tensor
        (T, H) boolean keep mask, shared by the batch.
    weight, bias : Tensor
        As in ``nn.Linear`` ((out, H) and (out,)).
    scale : float
        Applied to ``x`` (the inverted-dropout factor ``1/(1-p)``).
    """
    return _GatheredLinear.apply(x, keep, weight, bias, scale)  # type: ignore[no-any-return]
