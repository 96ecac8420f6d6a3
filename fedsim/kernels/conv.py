"""Conv1d / Conv2d per-example gradients from unfolded inputs.

Example i's weight gradient is ``Δ_i U_iᵀ`` with ``U_i`` = unfold(input_i), shape
(C_in·k, L), and ``Δ_i`` (C_out, L): the sequence-Linear case of
:mod:`fedsim.kernels.linear` with the L output positions as positions. Either all
``Δ_i U_iᵀ`` are materialised with one batched GEMM (cost L·C_out·C_in·k; the clipped sum
is then their weighted sum), or ghost norms ``⟨U_iᵀU_i, Δ_iᵀΔ_i⟩`` are used (cost
L²·(C_in·k + C_out)) and the clipped sum is one ordinary weight gradient of the
re-weighted ``Δ``. Patches come from a strided view of the padded input (one copy),
several times faster on CPU than ``F.unfold``.

Grouped, string-padded and non-zero-padded convolutions use the ``torch.func`` fallback.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.kernels.linear import prefer_ghost
from fedsim.kernels.registry import Kernel, Record, register_kernel, set_grad


def conv_is_plain(module: nn.Module) -> bool:
    """Whether the kernel applies (groups 1, integer zero padding)."""
    return (
        isinstance(module, nn.Conv1d | nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


# Below this many input channels the channels-first gather is the faster copy.
CHANNELS_LAST_MIN = 8


def patches(module: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(B, L, K) patches of ``x`` and whether their columns are channels-last.

    Columns are ordered (C_in, k...) like the weight, or (k..., C_in) when
    ``channels_last``: gathering C_in-long contiguous runs is several times faster for
    wide inputs, and a kernel permutes only the (C_out, K) result back.
    """
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)  # a 1-D convolution is a 2-D one of height 1
        kernel, stride, dil = (1, *module.kernel_size), (1, *module.stride), (1, *module.dilation)
        pad = (0, int(module.padding[0]))
    else:
        kernel, stride, dil = module.kernel_size, module.stride, module.dilation
        pad = (int(module.padding[0]), int(module.padding[1]))
    if any(pad):
        x = F.pad(x, (pad[1], pad[1], pad[0], pad[0]))
    b, c, h, w = x.shape
    ho = (h - dil[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (w - dil[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    k = c * kernel[0] * kernel[1]
    if c >= CHANNELS_LAST_MIN:
        x = x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)
        sb, sh, sw, sc = x.stride()
        view = x.as_strided(
            (b, ho, wo, kernel[0], kernel[1], c),
            (sb, sh * stride[0], sw * stride[1], sh * dil[0], sw * dil[1], sc),
        )
        return view.reshape(b, ho * wo, k), True
    sb, sc, sh, sw = x.stride()
    view = x.as_strided(
        (b, c, kernel[0], kernel[1], ho, wo),
        (sb, sc, sh * dil[0], sw * dil[1], sh * stride[0], sw * stride[1]),
    )
    return view.reshape(b, k, ho * wo).transpose(1, 2), False


def to_weight_layout(
    module: nn.Conv1d | nn.Conv2d, g: torch.Tensor, channels_last: bool
) -> torch.Tensor:
    """(C_out, K) in patch-column order -> the weight's (C_out, C_in, k...) layout."""
    if not channels_last:
        return g.view(module.weight.shape)
    c_out, c_in = module.weight.shape[:2]
    return g.view(c_out, *module.kernel_size, c_in).movedim(-1, 1)


@register_kernel(nn.Conv1d, nn.Conv2d)
class ConvKernel(Kernel):
    """Convolutions as position-shared linear maps."""

    def supports(self, module: nn.Module) -> bool:
        """Plain convolutions only; the rest go to the ``torch.func`` fallback."""
        return conv_is_plain(module)

    def norm_sq(self, module: nn.Module, record: Record) -> torch.Tensor:
        """Weight norm by the cheaper route, plus the bias norm ``‖Σ_positions δ‖²``."""
        assert isinstance(module, nn.Conv1d | nn.Conv2d)
        calls = [(inp[0], g.flatten(2)) for inp, g in zip(record.inputs, record.grads, strict=True)]
        c_out, k = module.weight.shape[0], module.weight[0].numel()
        positions = calls[0][1].shape[2]
        out: torch.Tensor
        batch = calls[0][1].shape[0]
        if len(calls) == 1 and prefer_ghost(batch, positions, k, c_out):
            u, channels_last = patches(module, calls[0][0])  # (B, L, K)
            d = calls[0][1]  # (B, C_out, L)
            ghost = torch.bmm(u, u.transpose(1, 2)) * torch.bmm(d.transpose(1, 2), d)  # (B, L, L)
            out = ghost.sum((1, 2))
            record.cache["u"], record.cache["channels_last"] = u, channels_last
        else:
            u, channels_last = patches(module, calls[0][0])
            g = torch.bmm(calls[0][1], u)  # (B, C_out, K): per-example gradients
            for x, d in calls[1:]:
                g.baddbmm_(d, patches(module, x)[0])
            record.cache["g"], record.cache["channels_last"] = g.flatten(1), channels_last
            out = torch.linalg.vector_norm(record.cache["g"], dim=1).pow(2)
        if module.bias is not None:
            gb = calls[0][1].sum(2)
            for _, d in calls[1:]:
                gb = gb + d.sum(2)
            record.cache["gb"] = gb  # (B, C_out)
            out = out + gb.pow(2).sum(1)
        return out

    def accumulate(self, module: nn.Module, record: Record, coef: torch.Tensor) -> None:
        """Weighted sum of materialised gradients, or one re-weighted weight gradient."""
        assert isinstance(module, nn.Conv1d | nn.Conv2d)
        if "g" in record.cache:
            g = (coef @ record.cache["g"]).view(module.weight.shape[0], -1)
            set_grad(module.weight, to_weight_layout(module, g, record.cache["channels_last"]))
        else:  # ghost route: one GEMM over every patch of every example, Δ re-weighted
            u, d = record.cache["u"], record.grads[0].flatten(2)  # (B, L, K), (B, C_out, L)
            dw = (d * coef.view(-1, 1, 1)).transpose(0, 1).reshape(d.shape[1], -1)  # (C_out, B·L)
            g = dw @ u.reshape(-1, u.shape[2])  # (C_out, K)
            set_grad(module.weight, to_weight_layout(module, g, record.cache["channels_last"]))
        if module.bias is not None:
            set_grad(module.bias, coef @ record.cache["gb"])
