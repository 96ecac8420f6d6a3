"""``client.weights``: a client model kept in fixed point while it trains.

Golovin, Sculley, McMahan & Young, "Large-Scale Learning with Less RAM via
Randomization" (ICML 2013): weights stored as ``bits``-bit integers times a resolution
``step`` (their q2.13 encoding is 16 bits, step 2^-13), projected back onto that grid
after every update by randomized rounding, which keeps each update unbiased, so
updates smaller than a step still move a weight in expectation. Deterministic
(nearest) rounding erases them: the comparison the paper makes.

The received model is rounded before training and after every optimizer step; float
parameters only (buffers and integer arrays stay as they are). The reply's metric
``model-bytes`` is the model's size in this encoding.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fedsim.config.schema import LowPrecisionWeights
from fedsim.rounding import ROUNDINGS


class FixedPointWeights:
    """Round a model's float parameters onto the fixed-point grid of ``cfg``.

    Parameters
    ----------
    cfg : LowPrecisionWeights
        Bits, resolution and rounding method.
    rng : numpy.random.Generator
        Draws of randomized rounding (seeded by the job).
    """

    def __init__(self, cfg: LowPrecisionWeights, rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.rng = rng
        self.round = ROUNDINGS.get(cfg.rounding)
        self.low, self.high = -(2 ** (cfg.bits - 1)), 2 ** (cfg.bits - 1) - 1

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> None:
        """Project every float parameter onto the grid, in place."""
        for param in model.parameters():
            if not param.dtype.is_floating_point:
                continue
            q = param.detach().cpu().numpy().astype(np.float64) / self.cfg.step
            k = np.clip(self.round(q, self.rng), self.low, self.high)
            param.copy_(torch.from_numpy(k * self.cfg.step).to(param.dtype))

    def model_bytes(self, model: nn.Module) -> int:
        """Bytes of the model's float parameters at ``bits`` bits each."""
        count = sum(p.numel() for p in model.parameters() if p.dtype.is_floating_point)
        return math.ceil(self.cfg.bits * count / 8)
