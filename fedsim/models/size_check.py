"""A model's size, counted before it is built: ``hidden: [1e9]`` is refused, not allocated.

The factory runs once on PyTorch's ``meta`` device, where tensors have shapes but no
storage, so counting the parameters of a 10^11-weight model costs nothing. A factory
that cannot run there (it computes on real values while building) is left to the real
build. The random generator is restored afterwards: the count draws nothing a run's
seeded initial weights would miss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fedsim.errors import Problem

# 10^9 float32 weights are 4 GB per copy; a simulation holds the global model, each
# worker's client models and their optimizer state, so past this nothing useful runs.
MAX_MODEL_PARAMETERS = 1_000_000_000


def counted_parameters(
    factory: Callable[..., nn.Module], input_shape: tuple[int, ...], num_classes: int, **params: Any
) -> int | None:
    """The number of parameters and buffers ``factory`` would build (None: not countable)."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = factory(input_shape, num_classes, **params)
    except Exception:  # not buildable on meta: the real build says what is wrong, if anything
        return None
    if not isinstance(model, nn.Module):
        return None
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() for t in tensors)


def size_problem(count: int | None) -> Problem | None:
    """The problem of a model with ``count`` parameters (None if it is plausible)."""
    if count is None or count <= MAX_MODEL_PARAMETERS:
        return None
    return Problem(
        "model.params",
        f"the model would have {count:.3g} parameters ({4 * count / 2**30:.3g} GiB as float32); "
        f"at most {MAX_MODEL_PARAMETERS:.0e}",
    )
