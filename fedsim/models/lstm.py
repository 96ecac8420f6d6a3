"""LSTM sequence classifier (image rows or sequence steps as time steps).

Built on :class:`fedsim.kernels.StructuredDropoutLSTM` (parameters named as in
``nn.LSTM``), so structured dropout and DP-SGD's fast per-example clipping apply to it.
"""

from __future__ import annotations

import torch
from torch import nn

from fedsim.kernels import StructuredDropoutLSTM
from fedsim.models import IncompatibleDataError, register_model


class LSTMClassifier(nn.Module):
    """An LSTM over time steps whose last hidden state feeds a linear classifier.

    Inputs of shape (B, T) are read as T steps of one feature; (B, C, H, W) images as
    H steps of C*W features (the rows of the image).
    """

    def __init__(
        self, features: int, hidden: int, num_layers: int, num_classes: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.features = features
        self.lstm = StructuredDropoutLSTM(features, hidden, num_layers, dropout)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits (B, num_classes)."""
        if x.dim() == 4:  # (B, C, H, W) -> (B, H, C*W)
            x = x.permute(0, 2, 1, 3).flatten(2)
        elif x.dim() == 2:  # (B, T) -> (B, T, 1)
            x = x.unsqueeze(-1)
        out, _ = self.lstm(x)  # (B, T, H)
        return self.head(out[:, -1])  # type: ignore[no-any-return]


@register_model("lstm", inputs="(T,), (T, F) sequences or (C, H, W) images (rows as steps)")
def lstm(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: int = 64,
    num_layers: int = 1,
    dropout: float = 0.0,
) -> nn.Module:
    """LSTM classifier for sequences (T,) / (T, F) or images (C, H, W)."""
    if len(input_shape) == 1:
        features = 1
    elif len(input_shape) == 2:
        features = input_shape[1]
    elif len(input_shape) == 3:
        features = input_shape[0] * input_shape[2]
    else:
        raise IncompatibleDataError(f"'lstm' cannot read inputs of shape {input_shape}")
    return LSTMClassifier(features, hidden, num_layers, num_classes, dropout)
