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

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fedsim.kernels.registry import Kernel, Record, register_kernel, set_grad

# Largest per-example gradient tensor (B·p·d floats) a kernel materialises: 256 MiB.
MATERIALISE_MAX = 64 * 2**20


def prefer_ghost(batch: int, positions: int, d_in: int, d_out: int) -> bool:
    """Whether ghost norms beat materialising per-example gradients (see module doc)."""
    return positions * (d_in + d_out) < d_in * d_out or batch * d_in * d_out > MATERIALISE_MAX


def seq_norm_sq(
    parts: Sequence[torch.Tensor],
    d: torch.Tensor,
    cache: dict[str, Any] | None = None,
    key: str = "g",
) -> torch.Tensor:
    """Squared norms of ``g_i = Δ_iᵀ [A_i¹, A_i², ...]`` for inputs ``parts`` (B, T, d_k).

    The parts are the column blocks of one input (an LSTM layer's ``[X̃, H_prev]``),
    never concatenated: a ghost norm adds their Grams ``Σ_k A_i^k A_i^kᵀ``. ``d`` is
    (B, T, p). If the materialised route is taken and ``cache`` is given, the
    per-example gradients of every block ((B, p, d_k) each) are kept there under ``key``
    for :func:`seq_weighted_sum`.
    """
    t, din, dout = d.shape[1], sum(a.shape[2] for a in parts), d.shape[2]
    if t == 1:
        a_sq = sum(a[:, 0].pow(2).sum(1) for a in parts)
        return a_sq * d[:, 0].pow(2).sum(1)
    if prefer_ghost(d.shape[0], t, din, dout):
        aa = sum(torch.bmm(a, a.transpose(1, 2)) for a in parts)  # (B, T, T)
        dd = torch.bmm(d, d.transpose(1, 2))  # (B, T, T)
        return (aa * dd).sum((1, 2))
    dt = d.transpose(1, 2)
    grads = [torch.bmm(dt, a) for a in parts]  # (B, p, d_k) each
    if cache is not None:
        cache[key] = grads
    return sum(g.flatten(1).pow(2).sum(1) for g in grads)  # type: ignore[return-value]


def seq_weighted_sum(
    parts: Sequence[torch.Tensor],
    d: torch.Tensor,
    coef: torch.Tensor,
    cache: dict[str, Any] | None = None,
    key: str = "g",
) -> list[torch.Tensor]:
    """``Σ_i coef_i Δ_iᵀ A_i^k`` (p, d_k) for every block: a GEMM over all positions each.

    The coefficients scale the narrower side, the blocks or ``Δ``: the DP char-LSTM's
    layers have 264 and 512 input columns against 1,024 gate columns, and scaling
    ``Δ`` took longer than the rest of the clipped sum of the first.
    """
    if cache is not None and key in cache:
        return [torch.einsum("b,bpd->pd", coef, g) for g in cache[key]]
    scale_d = d.shape[2] <= sum(a.shape[2] for a in parts)
    if d.shape[1] > 1 and _time_major(d):
        # (B, T, ·) views of (T, B, ·) storage (the LSTM's captures): the same sum over
        # positions in storage order, with no copy of Δ (a batch-major block, an LSTM's
        # raw input, is copied by ``reshape``).
        weight = coef.view(1, -1, 1)
        d_rows, a_rows = d.transpose(0, 1), [a.transpose(0, 1) for a in parts]
    else:
        weight = coef.view(-1, 1, 1)
        d_rows, a_rows = d, list(parts)
    if scale_d:
        d_rows = d_rows * weight
    else:
        a_rows = [a * weight for a in a_rows]
    g = d_rows.reshape(-1, d.shape[2])
    # As (Aᵀ Δ)ᵀ: MKL ran Δᵀ A with a narrow A (the char-LSTM's 8 embedding columns) at
    # a tenth of the speed (67 against 6.7 ms, one thread), and never faster elsewhere.
    return [(a.reshape(-1, a.shape[2]).t() @ g).t().contiguous() for a in a_rows]


def _time_major(x: torch.Tensor) -> bool:
    """Whether a (B, T, f) tensor is a transposed view of contiguous (T, B, f) storage."""
    return x.transpose(0, 1).is_contiguous()


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
        out = seq_norm_sq((a,), d, record.cache)
        if module.bias is not None:
            out = out + d.sum(1).pow(2).sum(1)
        return out

    def accumulate(self, module: nn.Module, record: Record, coef: torch.Tensor) -> None:
        """Clipped weight and bias sums."""
        a, d = self._ad(record)
        set_grad(module.weight, seq_weighted_sum((a,), d, coef, record.cache)[0])
        if module.bias is not None:
            set_grad(module.bias, coef @ d.sum(1))
