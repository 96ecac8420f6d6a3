"""One built model per architecture, reused by the jobs of a client process.

Building a model (module construction and its random initialisation) costs about as
much as a small model's whole local step; a simulated client process runs thousands of
jobs on the same architecture. A job may reuse the process's model only when the
message overwrites every entry of its state (so nothing of an earlier job survives) and
nothing has been attached to it (Opacus's DP modes wrap the model with hooks, so DP
jobs always build their own).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection
from typing import Any

from torch import nn

from fedsim.models import build_model

_local = threading.local()  # engines may run clients on several threads


def model_for_job(
    name: str,
    params: dict[str, Any],
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    overwritten: Collection[str] = (),
    reusable: bool = True,
    device: str = "cpu",
) -> nn.Module:
    """Return a model of this architecture: the reused one, or a newly built one.

    Parameters
    ----------
    overwritten : collection of str
        State entries the caller is about to load; the kept model is reused only if
        these cover its whole ``state_dict``.
    reusable : bool
        False: build a model of the job's own and keep nothing.
    device : str
        Where the model lives (``fedsim.training_device``); one kept model per device.

    A newly built model is initialised from torch's default generator, so seed it
    first if the initial values matter.
    """
    cache: dict[str, tuple[nn.Module, frozenset[str]]] = _local.__dict__.setdefault("models", {})
    key = json.dumps(
        [name, params, list(input_shape), num_classes, device], sort_keys=True, default=repr
    )
    kept = cache.get(key)
    if reusable and kept is not None and kept[1] <= set(overwritten):
        model = kept[0]
        for p in model.parameters():
            p.grad = None  # as a new model has
        return model
    model = build_model(name, params, input_shape, num_classes)
    if device != "cpu":  # built (and initialised) on the CPU: the same values everywhere
        model = model.to(device)
    if reusable:
        cache[key] = (model, frozenset(model.state_dict()))
    return model
