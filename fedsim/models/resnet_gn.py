"""A small ResNet with GroupNorm: no batch statistics, so DP-SGD and FL both apply.

Batch normalisation mixes the examples of a batch (per-example gradients stop being
independent, which DP-SGD needs) and keeps running statistics that federated averaging
handles badly across non-IID clients; GroupNorm has neither problem (Hsieh et al. 2020
replace BatchNorm by GroupNorm for non-IID FL; Reddi et al. 2021 use it in ResNet-18).
"""

from __future__ import annotations

import torch
from torch import nn

from fedsim.models import IncompatibleDataError, register_model


class _Block(nn.Module):
    """Two 3x3 conv + GroupNorm layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.GroupNorm(groups, c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


@register_model("resnet-gn", inputs="(C, H, W) images, e.g. (3, 32, 32) CIFAR")
def resnet_gn(
    input_shape: tuple[int, ...],
    num_classes: int,
    widths: tuple[int, ...] | list[int] = (16, 32, 64),
    blocks_per_stage: int = 1,
    groups: int = 2,
) -> nn.Module:
    """ResNet (CIFAR layout: 3x3 stem, stages halving the size) with GroupNorm.

    Defaults: widths (16, 32, 64), one block per stage (ResNet-8, 78 k parameters at 10
    classes); ``blocks_per_stage=3`` is ResNet-20. ``groups`` GroupNorm groups per layer.
    """
    if len(input_shape) != 3:
        raise IncompatibleDataError(
            f"'resnet-gn' needs image data of shape (C, H, W), got {input_shape}"
        )
    widths = [int(w) for w in widths]
    if any(w % groups for w in widths):
        raise IncompatibleDataError(f"'resnet-gn': every width in {widths} must divide by groups")
    layers: list[nn.Module] = [
        nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False),
        nn.GroupNorm(groups, widths[0]),
        nn.ReLU(),
    ]
    c = widths[0]
    for stage, width in enumerate(widths):
        for b in range(blocks_per_stage):
            layers.append(_Block(c, width, 2 if stage > 0 and b == 0 else 1, groups))
            c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)
