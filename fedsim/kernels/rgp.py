"""Reparametrized gradient perturbation (RGP; Yu, Zhang, Chen et al., ICML 2021): the math.

A weight ``W`` (p, d) of a Linear layer (or a plain convolution, ``W`` viewed as
(C_out, C_in·k...)) is reparametrized as ``W = L R + W̃`` with gradient carriers
``L`` (p, r), orthonormal columns, and ``R`` (r, d), orthonormal rows. Example i's
weight gradient is ``g_i = Δ_iᵀ A_i`` (A_i (T, d) the layer's inputs at its T positions,
Δ_i (T, p) its output gradients), so its carrier gradients are

``∂L_i = g_i Rᵀ = Δ_iᵀ (A_i Rᵀ)`` (p, r)   and   ``∂R_i = Lᵀ g_i = (Δ_i L)ᵀ A_i`` (r, d),

computed here from A and Δ through the rank-r products ``A Rᵀ`` and ``Δ L``: ``g_i``
itself (p·d per example) is never formed. From (noisy) carrier gradients the weight's
update is reconstructed as ``∂L R + L ∂R − L Lᵀ ∂L R``, which for exact carrier
gradients of G is the projection ``P_L G + G P_R − P_L G P_R`` (``P_L = L Lᵀ``,
``P_R = Rᵀ R``): G itself at full rank.

The carriers come from a historical update H (p, d) by ``power_iterations`` rounds of
the power method (``L <- orth(H Rᵀ)``, ``R <- Lᵀ H``) from a Gaussian ``R``, then
``R <- orth(R)``; with no history (H = 0) they are random orthonormal bases.
"""

from __future__ import annotations

import torch
from torch import nn

from fedsim.kernels.conv import conv_is_plain, patches
from fedsim.kernels.linear import as_sequence
from fedsim.kernels.registry import Record


def supports_rgp(module: nn.Module) -> bool:
    """Whether RGP reparametrizes ``module``'s weight (Linear, plain Conv1d/Conv2d)."""
    return type(module) is nn.Linear or (
        type(module) in (nn.Conv1d, nn.Conv2d) and conv_is_plain(module)
    )


def weight_shape(module: nn.Module) -> tuple[int, int]:
    """``(p, d)``: the weight as a matrix (outputs by inputs)."""
    w = module.weight
    assert isinstance(w, torch.Tensor)
    return int(w.shape[0]), int(w[0].numel())


def _orthonormal_columns(m: torch.Tensor) -> torch.Tensor:
    q: torch.Tensor = torch.linalg.qr(m).Q
    return q


def carriers(
    history: torch.Tensor | None,
    shape: tuple[int, int],
    rank: int,
    power_iterations: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient carriers ``L`` (p, r) and ``R`` (r, d), r = min(rank, p, d), on the CPU.

    ``history`` is the last (privatised) update of the weight, or None (random bases).
    The Gaussian start is drawn from ``generator`` on the CPU whatever the device.
    """
    p, d = shape
    r = min(rank, p, d)
    start = torch.randn((r, d), generator=generator, dtype=torch.float64)
    if history is None or not bool(history.abs().sum() > 0):
        left = torch.randn((p, r), generator=generator, dtype=torch.float64)
        return _orthonormal_columns(left).to(dtype), _orthonormal_columns(start.T).T.to(dtype)
    h = history.detach().to("cpu", torch.float64).reshape(p, d)
    right = start
    left = _orthonormal_columns(h @ right.T)  # (p, r)
    for _ in range(power_iterations):
        right = left.T @ h  # (r, d)
        left = _orthonormal_columns(h @ right.T)
    right = left.T @ h
    return left.to(dtype), _orthonormal_columns(right.T).T.to(dtype)


def layer_inputs(module: nn.Module, record: Record) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, Δ)`` of a captured layer: (B, T, d) inputs and (B, T, p) output gradients.

    For a convolution the positions are its output positions and A its patches, columns
    in the weight's (C_in, k...) order; several calls are more positions.
    """
    if type(module) is nn.Linear:
        a = [as_sequence(x[0]) for x in record.inputs]
        g = [as_sequence(d) for d in record.grads]
    else:
        assert isinstance(module, nn.Conv1d | nn.Conv2d)
        a, g = [], []
        for inp, d in zip(record.inputs, record.grads, strict=True):
            u, channels_last = patches(module, inp[0])  # (B, L, K)
            if channels_last:  # columns (k..., C_in) -> the weight's (C_in, k...)
                b, n = u.shape[:2]
                k = u.shape[2] // module.in_channels
                u = u.reshape(b, n, k, module.in_channels).transpose(2, 3).reshape(b, n, -1)
            a.append(u)
            g.append(d.flatten(2).transpose(1, 2))  # (B, L, C_out)
    return (a[0], g[0]) if len(a) == 1 else (torch.cat(a, 1), torch.cat(g, 1))


def carrier_grads(
    a: torch.Tensor, delta: torch.Tensor, left: torch.Tensor, right: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example ``∂L_i`` (B, p, r) and ``∂R_i`` (B, r, d) from A (B, T, d), Δ (B, T, p)."""
    ar = a @ right.T  # (B, T, r)
    dl = delta @ left  # (B, T, r)
    return delta.transpose(1, 2) @ ar, dl.transpose(1, 2) @ a


def reconstruct(
    grad_left: torch.Tensor, grad_right: torch.Tensor, left: torch.Tensor, right: torch.Tensor
) -> torch.Tensor:
    """The weight's update (p, d) from carrier gradients: ``∂L R + L ∂R − L Lᵀ ∂L R``.

    As ``(∂L − L Lᵀ ∂L) R + L ∂R``: one (p, d) result, every other product rank-r.
    """
    residual = grad_left - left @ (left.T @ grad_left)  # (p, r)
    return (residual @ right).addmm_(left, grad_right)
