"""``engine.batch_clients: auto``: how many clients one stacked computation holds.

A heuristic, not a measurement: per client the stack keeps about eight copies of the
model (parameters, gradients, two optimizer states, the step's stacked tensors and
vmap's temporaries) and, for one batch, about 128 floats of activations per input value
(a ResNet-8 keeps ~110 per pixel value through its forward and backward passes). A
chunk takes half of the training device's free memory: CUDA's free memory
(``torch.cuda.mem_get_info``), or the CPU's available physical memory.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

MODEL_COPIES = 8
ACTIVATION_FLOATS_PER_INPUT = 128
SHARE_OF_FREE = 0.5
MAX_CHUNK = 4096  # beyond this the chunk's own bookkeeping dominates


def free_bytes(device: str) -> int:
    """Free memory of ``device`` (bytes)."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def auto_chunk(model: nn.Module, input_shape: tuple[int, ...], batch: int, device: str) -> int:
    """Clients per stacked computation for ``model`` at ``batch`` examples of ``input_shape``."""
    params = sum(p.numel() for p in model.parameters())
    per_client = 4 * (
        MODEL_COPIES * params + batch * math.prod(input_shape) * ACTIVATION_FLOATS_PER_INPUT
    )
    return max(1, min(MAX_CHUNK, int(SHARE_OF_FREE * free_bytes(device) // max(per_client, 1))))
