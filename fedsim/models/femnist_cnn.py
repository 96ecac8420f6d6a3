"""The LEAF FEMNIST CNN (Caldas et al. 2018, LEAF's ``femnist/cnn.py``)."""

from __future__ import annotations

from torch import nn

from fedsim.models import IncompatibleDataError, register_model


@register_model("femnist-cnn", inputs="(1, 28, 28) images (LEAF FEMNIST)")
def femnist_cnn(input_shape: tuple[int, ...], num_classes: int, hidden: int = 2048) -> nn.Module:
    """LEAF's FEMNIST CNN: two 5x5 'same' conv + 2x2 max-pool blocks (32, 64), dense 2048.

    The shape LEAF's baselines report FEMNIST results with; 6.6 M parameters at 62
    classes, almost all in the first dense layer.
    """
    if tuple(input_shape) != (1, 28, 28):
        raise IncompatibleDataError(
            f"'femnist-cnn' needs (1, 28, 28) images, got {input_shape}; use 'cnn' or 'resnet-gn'"
        )
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
