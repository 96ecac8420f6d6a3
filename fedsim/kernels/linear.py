"""nn.Linear, and the shared math of a weight applied at many positions.

For a weight used at T positions of example i with inputs ``A_i`` (T, d) and output
gradients ``Δ_i`` (T, p), ``g_i = Δ_iᵀ A_i``. Two routes to norm and clipped sum:

* materialise every ``g_i`` (one batched GEMM, cost T·d·p per example); the clipped sum
  is then their weighted sum (d·p per example);
* ghost norms ``⟨A_i A_iᵀ, Δ_i Δ_iᵀ⟩`` (Li et al. 2021, cost T²·(d+p)); the clipped sum
  is then one GEMM over all positions with re-weighted ``Δ`` (T·d·p per example).

Materialising is cheaper unless ``T²·(d+p) < d·p``, or unless the per-example gradients
would not fit :data:`MATERIALISE_MAX` floats. With T = 1 the norm is ``‖δ_i‖²·‖a_i‖²``.
"""

from __future__ import annotations

import torch
from torch import nn

from fedsim.kernels.registry import Kernel, Record, register_kernel, set_grad

# Largest per-example gradient tensor (B·p·d floats) a kernel materialises: 256 MiB.
MATERIALISE_MAX = 64 * 2**20


def prefer_ghost(batch: int, positions: int, d_in: int, d_out: int) -> bool:
    """Whether ghost norms beat materialising per-example gradients (see module doc)."""
    return positions * (d_in + d_out) < d_in * d_out or batch * d_in * d_out > MATERIALISE_MAX


def seq_norm_sq(
    a: torch.Tensor, d: torch.Tensor, cache: dict[str, torch.Tensor] | None = None, key: str = "g"
) -> torch.Tensor:
    """Squared norms of ``g_i = Δ_iᵀ A_i`` for ``a`` (B, T, d) and ``d`` (B, T, p).

    If the materialised route is taken and ``cache`` is given, the per-example
    gradients (B, p, d) are kept there under ``key`` for :func:`seq_weighted_sum`.
    """
    t, din, dout = a.shape[1], a.shape[2], d.shape[2]
    if t == 1:
        return a[:, 0].pow(2).sum(1) * d[:, 0].pow(2).sum(1)
    if prefer_ghost(a.shape[0], t, din, dout):
        aa = torch.bmm(a, a.transpose(1, 2))  # (B, T, T)
        dd = torch.bmm(d, d.transpose(1, 2))  # (B, T, T)
        return (aa * dd).sum((1, 2))
    g = torch.bmm(d.transpose(1, 2), a)  # (B, p, d)
    if cache is not None:
        cache[key] = g
    norm: torch.Tensor = torch.linalg.vector_norm(g.flatten(1), dim=1)
    return norm.pow(2)


def seq_weighted_sum(
    a: torch.Tensor,
    d: torch.Tensor,
    coef: torch.Tensor,
    cache: dict[str, torch.Tensor] | None = None,
    key: str = "g",
) -> torch.Tensor:
    """``Σ_i coef_i Δ_iᵀ A_i`` (p, d): one GEMM over all positions of all examples."""
    if cache is not None and key in cache:
        return torch.einsum("b,bpd->pd", coef, cache[key])
    dw = d * coef.view(-1, 1, 1)  # (B, T, p)
    return dw.reshape(-1, d.shape[2]).t() @ a.reshape(-1, a.shape[2])


def as_sequence(x: torch.Tensor) -> torch.Tensor:
    """(B, ..., f) -> (B, T, f) with all middle axes as positions."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


@register_kernel(nn.Linear)
class LinearKernel(Kernel):
    """Linear layers on (B, f) or (B, ..., f) inputs; several calls act as more positions."""

    def _ad(self, record: Record) -> tuple[torch.Tensor, torch.Tensor]:
        if "a" not in record.cache:
            # Several calls of one layer are more positions of the same weight.
            a = [as_sequence(x[0]) for x in record.inputs]
            d = [as_sequence(g) for g in record.grads]
            record.cache["a"] = a[0] if len(a) == 1 else torch.cat(a, dim=1)
            record.cache["d"] = d[0] if len(d) == 1 else torch.cat(d, dim=1)
        return record.cache["a"], record.cache["d"]

    def norm_sq(self, module: nn.Module, record: Record) -> torch.Tensor:
        """Weight norm (ghost or materialised) plus bias norm ``‖Σ_t δ_t‖²``."""
        a, d = self._ad(record)
        out = seq_norm_sq(a, d, record.cache)
        if module.bias is not None:
            out = out + d.sum(1).pow(2).sum(1)
        return out

    def accumulate(self, module: nn.Module, record: Record, coef: torch.Tensor) -> None:
        """Clipped weight and bias sums."""
        a, d = self._ad(record)
        set_grad(module.weight, seq_weighted_sum(a, d, coef, record.cache))
        if module.bias is not None:
            set_grad(module.bias, coef @ d.sum(1))
