"""LASGD's worker side: the model a worker keeps computing on, in ``context.state``.

A worker's model cannot be the server's: it keeps computing while averages are in
flight. It lives in the node's ``context.state`` (in deployment every message is a
fresh process) and each message says how to merge what arrived into it, as the affine
map ``x <- a*x + b`` (``a`` in the config, ``b`` the message's arrays; see
:mod:`fedsim.algorithms.lasgd.server`). The worker's momentum buffers live there too: they
persist from message to message and are never averaged.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from torch import nn

from fedsim import wire
from fedsim.algorithms.lasgd import keys
from fedsim.client.actions import register_action
from fedsim.client.job import TRAIN_PURPOSE, resolve_job, train_job
from fedsim.client.optimizers import SGD, LocalOptimizer, make_optimizer
from fedsim.config.schema import OptimizerConfig

KEPT_MODEL = "lasgd-model"  # context.state record: the worker's current model x
KEPT_MOMENTUM = "lasgd-momentum"  # context.state record: SGD momentum, by parameter name


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


def kept_optimizer(model: nn.Module, state: RecordDict, cfg: OptimizerConfig) -> LocalOptimizer:
    """``cfg``'s optimizer over ``model``, with the momentum buffers the worker kept.

    Only fedsim's SGD has state worth keeping here; another optimizer starts afresh
    every message (documented in docs/strategies.md).
    """
    optimizer = make_optimizer(model.parameters(), cfg)
    kept = state.array_records.get(KEPT_MOMENTUM)
    if isinstance(optimizer, SGD) and kept is not None:
        optimizer.momentum_buffers = [
            torch.from_numpy(np.array(kept[n].numpy())).to(p.device) if n in kept else None
            for n, p in model.named_parameters()
        ]
    return optimizer


def keep(state: RecordDict, model: nn.Module, optimizer: LocalOptimizer | None = None) -> None:
    """Store ``model`` as the worker's current model (and ``optimizer``'s momentum)."""
    state[KEPT_MODEL] = ArrayRecord({k: v.cpu() for k, v in model.state_dict().items()})
    if isinstance(optimizer, SGD) and optimizer.momentum != 0:
        names = [name for name, _ in model.named_parameters()]
        state[KEPT_MOMENTUM] = ArrayRecord(
            {
                n: Array(b.cpu().numpy())
                for n, b in zip(names, optimizer.momentum_buffers, strict=True)
                if b is not None
            }
        )


@register_action("train", keys.LASGD_ACTION)
def train_lasgd_block(msg: Message, context: Context) -> Message:
    """One LASGD block: merge what arrived into the kept model, train, keep, reply.

    The reply's arrays are the block's snapshot (the model after its local steps); the
    worker keeps that model in ``context.state`` and computes on from it next block.
    """
    start = time.perf_counter()
    job = resolve_job(msg, context, purpose=TRAIN_PURPOSE, received_model=False)
    config = msg.content.config_records.get(wire.CONFIG, ConfigRecord())
    offset = msg.content.array_records.get(wire.ARRAYS, ArrayRecord())
    load_merged(job.model, context.state, float(config[keys.LASGD_SCALE]), offset)  # type: ignore[arg-type]
    optimizer = kept_optimizer(job.model, context.state, job.scenario.client.optimizer)
    reply = train_job(job, msg, context, start, optimizer)
    # Only after training: a failed block changes nothing.
    keep(context.state, job.model, optimizer)
    return reply
