"""A linear model on flattened inputs (least squares with ``client.loss: squared_error``)."""

from __future__ import annotations

import math

from torch import nn

from fedsim.models import register_model


@register_model("linear", inputs="any shape (flattened)")
def linear(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Flatten, then one affine layer (weight and bias) with ``num_classes`` outputs."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))
