"""LASGD's worker side: the model a worker keeps computing on, in ``context.state``.

A worker's model cannot be the server's: it keeps computing while averages are in
flight. It lives in the node's ``context.state`` (in deployment every message is a
fresh process) and each block message says how to merge what arrived into it, as the
affine map ``x <- a*x + b`` (``a`` in the config, ``b`` the message's arrays; see
:mod:`fedsim.strategies.lasgd` for why the server sends the merge in that form).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict
from torch import nn

KEPT_MODEL = "lasgd-model"  # context.state record: the worker's current model x


def load_merged(model: nn.Module, state: RecordDict, scale: float, offset: ArrayRecord) -> None:
    """Load ``scale * x + offset`` into ``model``, x being the worker's kept model.

    ``scale == 0`` starts the worker from ``offset`` (its first block); an empty
    ``offset`` with ``scale == 1`` keeps x as it is (nothing arrived: keep computing).

    Raises
    ------
    ValueError
        If the worker has no kept model and the server did not start it.
    """
    if scale == 0.0:
        merged = {k: v.numpy() for k, v in offset.items()}
    else:
        kept = state.array_records.get(KEPT_MODEL)
        if kept is None:
            raise ValueError("LASGD worker has no model yet: its first block needs scale 0")
        x = {k: v.numpy() for k, v in kept.items()}
        if scale != 1.0:
            x = {k: scale * v for k, v in x.items()}
        merged = {k: v + offset[k].numpy() for k, v in x.items()} if len(offset) else x
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in merged.items()})


def keep(state: RecordDict, model: nn.Module) -> None:
    """Store ``model`` as the worker's current model."""
    state[KEPT_MODEL] = ArrayRecord(model.state_dict())
