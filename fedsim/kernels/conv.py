"""Conv1d / Conv2d per-example gradients: three routes, the cheapest for the shapes.

Example i's weight gradient is ``Δ_i U_iᵀ`` with ``U_i`` = unfold(input_i), shape
(C_in·k, L), and ``Δ_i`` (C_out, L): the sequence-Linear case of
:mod:`fedsim.kernels.linear` with the L output positions as positions. Per example:

* ``materialise``: every ``Δ_i U_iᵀ`` by one batched GEMM (L·C_out·K multiply-adds);
  the clipped sum is their weighted sum;
* ``patch-gram``: ghost norm ``⟨U_iU_iᵀ, Δ_iᵀΔ_i⟩`` from the patches (L²·(K + C_out));
* ``pixel-gram``: the same ghost norm with ``U_iU_iᵀ`` from the Gram of the input's pixels
  (:mod:`fedsim.kernels.conv_gram`), no patch copied at all.

The ghost routes' clipped sum is the convolution's own weight gradient (oneDNN on the
CPU, cuDNN on CUDA) of the re-weighted ``Δ``: a second, weighted backward of this one
layer from what the pass captured. Patches come from a strided view of the padded input
(one copy), several times faster on CPU than ``F.unfold``.

Grouped, string-padded and non-zero-padded convolutions use the ``torch.func`` fallback.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.kernels.conv_gram import gram_cost, patch_gram
from fedsim.kernels.linear import MATERIALISE_MAX
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


def _materialise_cost(module: nn.Conv1d | nn.Conv2d, x: torch.Size, d: torch.Size) -> float:
    """L·C_out·K per example, or infinity if the per-example gradients would not fit."""
    c_out, k = module.weight.shape[0], module.weight[0].numel()
    if x[0] * c_out * k > MATERIALISE_MAX:
        return float("inf")
    return math.prod(d[2:]) * c_out * k


def _patch_gram_cost(module: nn.Conv1d | nn.Conv2d, x: torch.Size, d: torch.Size) -> float:
    """L²·(K + C_out) per example."""
    return math.prod(d[2:]) ** 2 * (module.weight[0].numel() + module.weight.shape[0])


def _pixel_gram_cost(module: nn.Conv1d | nn.Conv2d, x: torch.Size, d: torch.Size) -> float:
    """The pixel Gram's cost plus ``Δ_iᵀΔ_i``'s, or infinity if its Grams would not fit."""
    cost, floats = gram_cost(module, x)
    if x[0] * floats > MATERIALISE_MAX:
        return float("inf")
    return cost + math.prod(d[2:]) ** 2 * module.weight.shape[0]


def _materialised_norm_sq(
    module: nn.Conv1d | nn.Conv2d, calls: list[tuple[torch.Tensor, torch.Tensor]], record: Record
) -> torch.Tensor:
    """Every call's per-example gradients summed, kept for the clipped sum."""
    u, channels_last = patches(module, calls[0][0])
    # As (U_iᵀΔ_iᵀ)ᵀ: MKL ran this orientation faster (4.1 -> 3.3 ms for the 28x28 CNN's
    # first layer, 0.23 -> 0.11 ms for the 8x8 CNN's, one thread).
    g = torch.bmm(u.transpose(1, 2), calls[0][1].transpose(1, 2))  # (B, K, C_out)
    for x, d in calls[1:]:
        g.baddbmm_(patches(module, x)[0].transpose(1, 2), d.transpose(1, 2))
    # (B, C_out·K) per-example gradients, rows in the weight's (C_out, K) order.
    record.cache["g"], record.cache["channels_last"] = g.transpose(1, 2).flatten(1), channels_last
    norm: torch.Tensor = torch.linalg.vector_norm(record.cache["g"], dim=1)
    return norm.pow(2)


def _patch_gram_norm_sq(module: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``U_iU_iᵀ`` (B, L, L) from the copied patches."""
    u = patches(module, x)[0]  # (B, L, K)
    return torch.bmm(u, u.transpose(1, 2))


# Ghost routes by name: their cost per example and how they build ``U_iU_iᵀ`` (B, L, L).
GhostRoute = tuple[
    Callable[[nn.Conv1d | nn.Conv2d, torch.Size, torch.Size], float],
    Callable[[nn.Conv1d | nn.Conv2d, torch.Tensor], torch.Tensor],
]
GHOST_ROUTES: dict[str, GhostRoute] = {
    "patch-gram": (_patch_gram_cost, _patch_gram_norm_sq),
    "pixel-gram": (_pixel_gram_cost, patch_gram),
}


MATERIALISE = "materialise"


def conv_route(module: nn.Conv1d | nn.Conv2d, in_shape: torch.Size, out_shape: torch.Size) -> str:
    """The cheapest route for one call on inputs ``in_shape`` with outputs ``out_shape``.

    ``"materialise"`` or a key of :data:`GHOST_ROUTES`, by the multiply-adds of the
    norm per example. A ghost route's clipped sum then costs one weight gradient more,
    but it runs as one large GEMM, while materialising's per-example GEMMs ran 3-4x
    less efficiently on the CPU. Measured (norm and clipped sum, batch 128, one thread;
    materialise / patch-gram / pixel-gram, ms): 28x28 CNN layer 2 39.5 / 27.5 / 19.5,
    layer 1 5.6 / 313 / 858; 8x8 CNN layer 2 2.9 / 1.8 / 1.6; FEMNIST layer 2 86 / 200 /
    90; 16 -> 16 channels 3x3 on 32x32 65 / 1,468 / 2,124: this rule picks the fastest
    or, for FEMNIST, one within 5% of it.
    """
    costs = {name: cost(module, in_shape, out_shape) for name, (cost, _) in GHOST_ROUTES.items()}
    costs[MATERIALISE] = _materialise_cost(module, in_shape, out_shape)
    return min(costs, key=costs.__getitem__)


@register_kernel(nn.Conv1d, nn.Conv2d)
class ConvKernel(Kernel):
    """Convolutions as position-shared linear maps."""

    def supports(self, module: nn.Module) -> bool:
        """Plain convolutions only; the rest go to the ``torch.func`` fallback."""
        return conv_is_plain(module)

    def norm_sq(self, module: nn.Module, record: Record) -> torch.Tensor:
        """Weight norm by the cheapest route, plus the bias norm ``‖Σ_positions δ‖²``.

        A layer called more than once materialises (its calls' gradients add up per
        example before the norm).
        """
        assert isinstance(module, nn.Conv1d | nn.Conv2d)
        calls = [(inp[0], g.flatten(2)) for inp, g in zip(record.inputs, record.grads, strict=True)]
        x, d = calls[0]
        route = conv_route(module, x.shape, d.shape) if len(calls) == 1 else MATERIALISE
        out: torch.Tensor
        if route == MATERIALISE:
            out = _materialised_norm_sq(module, calls, record)
        else:
            uu = GHOST_ROUTES[route][1](module, x)  # (B, L, L)
            out = (uu * torch.bmm(d.transpose(1, 2), d)).sum((1, 2))
        if module.bias is not None:
            gb = d.sum(2)
            for _, d_more in calls[1:]:
                gb = gb + d_more.sum(2)
            record.cache["gb"] = gb  # (B, C_out)
            out = out + gb.pow(2).sum(1)
        return out

    def accumulate(self, module: nn.Module, record: Record, coef: torch.Tensor) -> None:
        """Weighted sum of materialised gradients, or a weight gradient of re-weighted Δ."""
        assert isinstance(module, nn.Conv1d | nn.Conv2d)
        if "g" in record.cache:
            g = (coef @ record.cache["g"]).view(module.weight.shape[0], -1)
            set_grad(module.weight, to_weight_layout(module, g, record.cache["channels_last"]))
        else:
            x, d = record.inputs[0][0], record.grads[0]
            scaled = d * coef.view(-1, *([1] * (d.dim() - 1)))
            set_grad(module.weight, _weight_grad(module, x, scaled))
        if module.bias is not None:
            set_grad(module.bias, coef @ record.cache["gb"])


def _weight_grad(module: nn.Conv1d | nn.Conv2d, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``Σ_i Δ_i U_iᵀ`` in the weight's layout: torch's own convolution weight gradient."""
    grads = torch.ops.aten.convolution_backward(
        d,
        x,
        module.weight.detach(),
        None,
        list(module.stride),
        [int(v) for v in module.padding],
        list(module.dilation),
        False,
        [0] * len(module.stride),
        module.groups,
        [False, True, False],
    )
    return grads[1]  # type: ignore[no-any-return]
