"""Images in the layout fedsim's models take: (N, C, H, W), said once when fixed.

NumPy, PIL and TensorFlow keep images channels-last, (N, H, W, C); torch's convolutions
take channels-first. An array whose last axis has a channel's size (1, 3 or 4) and
whose second has not is channels-last: it is transposed, and the user told once per
file, rather than handed to a convolution that reads 16 channels of width 3.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedsim.errors import FedsimWarning

CHANNELS = (1, 3, 4)  # grey, RGB, RGBA
_told: set[str] = set()  # files whose transposition was announced in this process


def channels_last(shape: tuple[int, ...]) -> bool:
    """(N, H, W, C) rather than (N, C, H, W): a channel-sized last axis only."""
    return len(shape) == 4 and shape[-1] in CHANNELS and shape[1] not in CHANNELS


def channels_first(x: NDArray[Any], where: str) -> NDArray[Any]:
    """``x`` with channels-last images transposed to (N, C, H, W); others unchanged.

    ``where`` (the scenario key and file) is named in the one-time notice.
    """
    if not channels_last(x.shape):
        return x
    if where not in _told:
        _told.add(where)
        n, h, w, c = x.shape
        warnings.warn(
            f"{where}: images of shape (N, H, W, C) = {(n, h, w, c)} are channels-last; "
            f"fedsim transposed them to (N, C, H, W) = {(n, c, h, w)}",
            FedsimWarning,
            stacklevel=2,
        )
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
