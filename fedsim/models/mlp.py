"""Multi-layer perceptron on flattened inputs."""

from __future__ import annotations

import math

from torch import nn

from fedsim.models import register_model


@register_model("mlp", inputs="any shape (flattened)")
def mlp(
    input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] | list[int] = (64,)
) -> nn.Module:
    """Flatten, then ``hidden`` ReLU layers, then a linear classifier."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
