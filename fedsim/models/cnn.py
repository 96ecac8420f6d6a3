"""Convolutional classifiers for images (2-D) and sequences (1-D).

No batch normalisation: per-example gradient clipping (DP-SGD) needs layers whose
per-example gradients are independent of the rest of the batch.
"""

from __future__ import annotations

import torch
from torch import nn

from fedsim.models import IncompatibleDataError, register_model


@register_model(
    "cnn", inputs="(C, H, W) or grey (H, W) images (3x3 kernels up to 16 pixels a side, else 5x5)"
)
def cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    channels: tuple[int, int] | list[int] = (32, 64),
    hidden: int = 128,
) -> nn.Module:
    """Two conv + max-pool blocks and two linear layers, for (C, H, W) images.

    Small images (at most 16 pixels a side, e.g. digits 8x8) use 3x3 kernels with
    padding; larger ones (MNIST 28x28) use 5x5 valid convolutions as in LeNet.
    """
    grey = len(input_shape) == 2  # (H, W) images: one channel, added in the forward pass
    if grey:
        input_shape = (1, *input_shape)
    if len(input_shape) != 3:
        raise IncompatibleDataError(
            f"'cnn' needs image data of shape (C, H, W) or (H, W), got {input_shape}; "
            "use 'cnn1d' or 'mlp'"
        )
    c, h, w = input_shape
    k, pad = (3, 1) if max(h, w) <= 16 else (5, 0)
    c1, c2 = (int(v) for v in channels)
    body = nn.Sequential(
        nn.Conv2d(c, c1, k, padding=pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, k, padding=pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    with torch.no_grad():
        flat = body(torch.zeros(1, *input_shape)).shape[1]
    head = [body, nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
    return nn.Sequential(*([_AddImageChannel()] if grey else []), *head)


class _AddImageChannel(nn.Module):
    """Grey images (..., H, W) to (..., 1, H, W) for Conv2d (batched or one example)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-3)


class _AddChannel(nn.Module):
    """(B, T) sequences to (B, 1, T) for Conv1d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1) if x.dim() == 2 else x


@register_model("cnn1d", inputs="(T,) or (C, T) sequences")
def cnn1d(
    input_shape: tuple[int, ...],
    num_classes: int,
    channels: tuple[int, int] | list[int] = (32, 64),
    hidden: int = 128,
) -> nn.Module:
    """Two Conv1d + max-pool blocks and two linear layers, for (T,) or (C, T) sequences."""
    if len(input_shape) not in (1, 2):
        raise IncompatibleDataError(
            f"'cnn1d' needs sequence data of shape (T,) or (C, T), got {input_shape}"
        )
    c_in = 1 if len(input_shape) == 1 else input_shape[0]
    c1, c2 = (int(v) for v in channels)
    body = nn.Sequential(
        _AddChannel(),
        nn.Conv1d(c_in, c1, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(c1, c2, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Flatten(),
    )
    flat = c2 * (input_shape[-1] // 4)
    if flat == 0:
        raise IncompatibleDataError(f"'cnn1d' needs sequences of length >= 4, got {input_shape}")
    return nn.Sequential(body, nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
