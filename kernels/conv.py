"""Conv1d / Conv2d per-example gradients.

Example i's weight gradient is ``Δ_i U_iᵀ`` with ``U_i`` = unfold(input_i) (C_in·k, L)
and ``Δ_i`` (C_out, L). Two routes, chosen by cost:

* materialise all of them at once as the weight gradient of a convolution with the
  batch folded into groups (B groups): the same optimised kernel as an ordinary
  weight gradient, cost L·C_out·C_in·k; the clipped sum is then a weighted sum of them;
* ghost norms ``⟨U_iᵀU_i, Δ_iᵀΔ_i⟩`` (cost L²·(C_in·k + C_out)), cheaper when there are
  few output positions and wide layers; the clipped sum is then one ordinary weight
  gradient of the re-weighted output gradients.

Grouped, string-padded and non-zero-padded convolutions use the ``torch.func`` fallback.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import grad as nn_grad

from fedsim.kernels.registry import Kernel, Record, register_kernel, set_grad

Conv = nn.Conv1d | nn.Conv2d


def conv_is_plain(module: nn.Module) -> bool:
    """Whether the kernel applies (groups 1, integer zero padding)."""
    return (
        isinstance(module, nn.Conv1d | nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _weight_grad(module: Conv, x: torch.Tensor, d: torch.Tensor, groups: int) -> torch.Tensor:
    """Weight gradient of ``module`` for input ``x`` and output gradient ``d``."""
    fn = nn_grad.conv1d_weight if isinstance(module, nn.Conv1d) else nn_grad.conv2d_weight
    c_out, c_in = module.weight.shape[:2]
    shape = (c_out * groups, c_in, *module.weight.shape[2:])
    return fn(x, shape, d, module.stride, module.padding, module.dilation, groups)  # type: ignore[no-any-return]


def per_example_weight_grads(module: Conv, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """(B, C_out, C_in·k): the batch folded into B groups of one convolution."""
    b = x.shape[0]
    g = _weight_grad(module, x.reshape(1, -1, *x.shape[2:]), d.reshape(1, -1, *d.shape[2:]), b)
    return g.view(b, module.weight.shape[0], -1)


def _ghost_cheaper(module: Conv, d: torch.Tensor) -> bool:
    positions = math.prod(d.shape[2:])
    k = module.weight[0].numel()  # C_in · kernel size
    return positions * (k + module.weight.shape[0]) < 0.5 * k * module.weight.shape[0]


def _unfold(module: Conv, x: torch.Tensor) -> torch.Tensor:
    """(B, C_in·k, L) patches matching the weight layout."""
    if isinstance(module, nn.Conv1d):
        return F.unfold(
            x.unsqueeze(2),
            (1, module.kernel_size[0]),
            dilation=(1, module.dilation[0]),
            padding=(0, int(module.padding[0])),
            stride=(1, module.stride[0]),
        )
    pad = tuple(int(p) for p in module.padding)
    return F.unfold(x, module.kernel_size, module.dilation, pad, module.stride)


@register_kernel(nn.Conv1d, nn.Conv2d)
class ConvKernel(Kernel):
    """Convolutions as position-shared linear maps."""

    def supports(self, module: nn.Module) -> bool:
        """Plain convolutions only; the rest go to the ``torch.func`` fallback."""
        return conv_is_plain(module)

    def norm_sq(self, module: nn.Module, record: Record) -> torch.Tensor:
        """Weight norm by the cheaper route, plus the bias norm ``‖Σ_positions δ‖²``."""
        assert isinstance(module, nn.Conv1d | nn.Conv2d)
        calls = list(zip(record.inputs, record.grads, strict=True))
        if len(calls) == 1 and _ghost_cheaper(module, calls[0][1]):
            (x,), d = calls[0][0][:1], calls[0][1]
            u = _unfold(module, x)  # (B, C_in·k, L)
            dl = d.flatten(2)  # (B, C_out, L)
            out = (torch.bmm(u.transpose(1, 2), u) * torch.bmm(dl.transpose(1, 2), dl)).sum((1, 2))
        else:
            g = sum(per_example_weight_grads(module, inp[0], d) for inp, d in calls)
            assert isinstance(g, torch.Tensor)
            record.cache["g"] = g
            out = torch.linalg.vector_norm(g.flatten(1), dim=1).pow(2)
        if module.bias is not None:
            gb = sum(d.flatten(2).sum(2) for _, d in calls)
            assert isinstance(gb, torch.Tensor)
            record.cache["gb"] = gb  # (B, C_out)
            out = out + gb.pow(2).sum(1)
        return out

    def accumulate(self, module: nn.Module, record: Record, coef: torch.Tensor) -> None:
        """Weighted sum of the materialised gradients, or one re-weighted weight gradient."""
        assert isinstance(module, nn.Conv1d | nn.Conv2d)
        if "g" in record.cache:
            set_grad(module.weight, coef @ record.cache["g"].flatten(1))
        else:
            x, d = record.inputs[0][0], record.grads[0]
            scaled = d * coef.view(-1, *([1] * (d.dim() - 1)))
            set_grad(module.weight, _weight_grad(module, x, scaled, groups=1))
        if module.bias is not None:
            set_grad(module.bias, coef @ record.cache["gb"])
