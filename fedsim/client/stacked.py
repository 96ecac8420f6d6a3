"""Many nodes' train jobs in one computation over stacked parameters (``engine.batch_clients``).

:func:`train_together` takes train messages (each with its node's Context) that the
ClientApp would handle one by one and trains the clients together: their parameters
stacked along a leading axis, each step one batched gradient (``torch.func``'s
``vmap`` over ``functional_call``, or for a plain MLP under cross-entropy the batched
matrix products of :func:`fedsim.kernels.stacked_mlp_cross_entropy_grad`) and one
elementwise SGD update of the whole stack. Each client still takes exactly the updates
it would take alone:

- its batch order is drawn by :func:`fedsim.client.loop.batch_spans` from the
  generator its ClientApp job would seed (:func:`fedsim.client.app.job_seed`);
- a last partial batch is padded and the padding weighs nothing in its loss;
- clients are ordered by step count, so the clients still training form a prefix of
  the stack and the finished ones are left alone (momentum and weight decay included);
- the loss is the step's ``data_loss`` plus its ``penalty`` and the update is
  :func:`fedsim.client.optimizers.sgd_update_`, the functions the one training loop
  calls (:func:`fedsim.client.loop.train_local`).

So a reply equals the ClientApp's up to float rounding (tests hold them within 1e-5
relative). A job that cannot be trained this way gets None, and the caller runs the
ClientApp as usual: not a train message, a step whose class is not ``vectorisable``,
a step that overrides another hook (``correction``, ``reply``, ``model_arrays``) or
fills arrays, a ``client.loss`` other than cross-entropy, a training device other
than the CPU, DP-SGD, low-precision weights,
link compression, attackers, an optimizer other than SGD, a model with buffers
(BatchNorm), dropout or recurrent layers, extra or withheld arrays, or a model that
``vmap`` cannot run. Each reason is said once per run
(:class:`~fedsim.errors.FedsimWarning`), never silently.

A vectorisable step's ``data_loss`` and ``penalty`` may depend only on the train config
and the received model (not on the node's data, state or identity): clients that
received the same message share one instance of the step.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from torch import nn

from fedsim import wire
from fedsim.array_codec import decode, encode
from fedsim.client.job import (
    TRAIN_PURPOSE,
    job_seed,
    partition,
    received_arrays,
    train_config,
)
from fedsim.client.loop import num_local_steps
from fedsim.client.losses import cross_entropy
from fedsim.client.model_cache import model_for_job
from fedsim.client.stacked_training import (
    train_stacked,
)
from fedsim.client.steps import LocalStep, StepInputs, select_step
from fedsim.client.unread_keys import warn_unread
from fedsim.config.schema import Scenario
from fedsim.data.node_data import NodeData
from fedsim.errors import FedsimWarning
from fedsim.fast_records import filled
from fedsim.run_config import scenario_from_run_config
from fedsim.training_device import client_device

# Layers whose forward pass draws random numbers or keeps state between calls: the
# stacked computation cannot reproduce the ClientApp's draws.
_UNSTACKABLE = (nn.modules.dropout._DropoutNd, nn.RNNBase)
_said: set[tuple[Hashable, str]] = set()  # (run, reason): each said once per run
_EMPTY_ARRAYS, _EMPTY_METRICS, _EMPTY_CONTENT = ArrayRecord(), MetricRecord(), RecordDict()


@dataclass
class StackedJob:
    """One train job, resolved."""

    index: int  # position among the jobs
    message: Message
    context: Context
    scenario: Scenario
    partition_id: int
    data: NodeData
    config: dict[str, Any]
    arrays: ArrayRecord
    seed: int
    step_cls: type[LocalStep]


def train_together(jobs: Sequence[tuple[Message, Context]], max_batch: int) -> list[Message | None]:
    """Train the train jobs that allow it together; return each job's reply or None.

    Parameters
    ----------
    jobs : sequence of (Message, Context)
        Train messages with their nodes' Contexts; both are only read, never changed
        (so the caller need not copy a message for this).
    max_batch : int
        At most this many clients train in one stacked computation.

    Returns
    -------
    list of Message or None
        In the order of ``jobs``: the reply the ClientApp would have given (up to float
        rounding), or None where the job must go through the ClientApp. Nothing here
        raises for a bad job: it gets None and the ClientApp reports its error.
    """
    out: list[Message | None] = [None] * len(jobs)
    groups: dict[tuple[Any, ...], list[StackedJob]] = {}
    for i, (message, context) in enumerate(jobs):
        client = _resolve(i, message, context)
        if client is not None:
            groups.setdefault(_group_key(client), []).append(client)
    size = max(1, max_batch)
    for members in groups.values():
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            for client, reply in zip(chunk, _train_chunk(chunk), strict=True):
                out[client.index] = reply
    trained = [c for g in groups.values() for c in g if out[c.index] is not None]
    if trained:
        # As after the last of these jobs had run through the ClientApp (which leaves
        # torch's default generator seeded with its job seed).
        torch.default_generator.manual_seed(max(trained, key=lambda c: c.index).seed)
    return out


def _run_key(context: Context) -> Hashable:
    """What tells runs apart (in-process runs share one run id; their directories differ)."""
    return (context.run_id, str(context.run_config.get(wire.RUN_DIR, "")))


def _say(context: Context, reason: str) -> None:
    """Warn once per run that some clients train one by one, and why."""
    key = (_run_key(context), reason)
    if key not in _said:
        _said.add(key)
        warnings.warn(
            f"engine.batch_clients: {reason}; those clients train one by one",
            FedsimWarning,
            stacklevel=3,
        )


# Each node's scenario, partition id and examples by its Context's id, kept with the
# Context (so the id cannot be reused) for one scenario at a time: they do not change
# while a run goes on, and resolving them anew was a fifth of a batched job's cost.
_nodes: dict[int, tuple[Context, Scenario, int, NodeData]] = {}


def _node(context: Context) -> tuple[Scenario, int, NodeData]:
    """``context``'s scenario, partition id and data (see :data:`_nodes`)."""
    scenario = scenario_from_run_config(context.run_config)
    hit = _nodes.get(id(context))
    if hit is not None and hit[0] is context and hit[1] is scenario:
        return scenario, hit[2], hit[3]
    first = next(iter(_nodes.values()), None)  # all entries share one scenario
    if first is not None and first[1] is not scenario:
        _nodes.clear()  # another run: forget the last one's nodes
    scenario, pid, data = partition(context)
    _nodes[id(context)] = (context, scenario, pid, data)
    return scenario, pid, data


def _resolve(index: int, message: Message, context: Context) -> StackedJob | None:
    """The job's client if it can be trained together with others, else None."""
    if message.metadata.message_type != "train" or not message.has_content():
        return None  # not what the ClientApp's plain train handler does
    try:
        scenario, pid, data = _node(context)
    except Exception:  # the ClientApp reports it
        return None
    reason = _refusal(scenario)
    device = client_device(scenario.engine.device, context.node_config)
    if reason is None and device != "cpu":
        reason = f"engine.device {device!r}: training together runs on the CPU only"
    config = dict(train_config(message))
    try:
        step_cls = select_step(config)
    except ValueError:
        return None
    if reason is None:
        reason = _step_refusal(step_cls)
    if reason is None and config.get(wire.LABEL_FLIP):
        reason = "label-flip attackers"
    if reason is not None:
        _say(context, reason)
        return None
    warn_unread(_run_key(context), step_cls, config)  # as the ClientApp's train handler does
    if len(data.y) == 0:
        return None
    try:
        arrays = received_arrays(message)
    except StopIteration:  # no arrays: the ClientApp reports it
        return None
    server_round = int(config.get(wire.SERVER_ROUND, 0))  # type: ignore[arg-type]
    seed = job_seed(scenario.seed, pid, server_round, TRAIN_PURPOSE)
    return StackedJob(index, message, context, scenario, pid, data, config, arrays, seed, step_cls)


def _refusal(scenario: Scenario) -> str | None:
    """Why no job of ``scenario`` can be trained together (None: they may be)."""
    cfg = scenario.client
    if cfg.dp is not None:
        return "client.dp trains one by one (per-example clipping and noise)"
    if cfg.weights is not None:
        return "client.weights (low-precision weights) trains one by one"
    if cfg.loss.name != "cross_entropy":  # others may depend on the node's labels
        return f"client.loss {cfg.loss.name!r} (only cross_entropy is vectorised)"
    if cfg.optimizer.name != "sgd":
        return f"client.optimizer.name {cfg.optimizer.name!r} (only sgd is vectorised)"
    if scenario.compression.active:
        return "compression codes each client's link"
    if scenario.system.attackers is not None:
        return "system.attackers changes attackers' replies"
    return None


def _step_refusal(step_cls: type[LocalStep]) -> str | None:
    """Why ``step_cls``'s clients cannot be trained together (None: they can).

    Only the hooks run here (``data_loss``, ``penalty``): a step that declares itself
    vectorisable but overrides one of the others still runs through the ClientApp.
    """
    name = step_cls.__name__
    if not step_cls.vectorisable:
        return f"local step {name} is not vectorisable"
    if not step_cls.trains or step_cls.fills:
        return f"local step {name} does not train the whole received model"
    for hook in ("correction", "reply", "model_arrays"):
        if getattr(step_cls, hook) is not getattr(LocalStep, hook):
            return f"local step {name} overrides {hook} (not vectorised)"
    return None


def _group_key(client: StackedJob) -> tuple[Any, ...]:
    """Clients with equal keys share the model, the step and its hyperparameters."""
    config = tuple(sorted((k, repr(v)) for k, v in client.config.items()))
    # Flower's strategies send every node the same arrays: one group per round.
    arrays = tuple((k, id(v)) for k, v in client.arrays.items())
    data = client.data
    return (
        id(client.scenario),
        client.step_cls,
        config,
        arrays,
        data.input_shape,
        data.num_classes,
        data.x.dtype,
    )


def _train_chunk(chunk: list[StackedJob]) -> list[Message | None]:
    """Train the clients of one group together; None for each if they cannot be."""
    start = time.perf_counter()
    first = chunk[0]
    scenario, data = first.scenario, first.data
    try:
        model = model_for_job(
            scenario.model.name,
            scenario.model.params,
            data.input_shape,
            data.num_classes,
            overwritten=first.arrays.keys(),
        )
    except Exception:  # the ClientApp reports it
        return [None] * len(chunk)
    reason = _unstackable(model, first.arrays)
    if reason is not None:
        _say(first.context, reason)
        return [None] * len(chunk)
    cfg = scenario.client
    try:
        model.load_state_dict({k: torch.from_numpy(decode(v)) for k, v in first.arrays.items()})
        inputs = StepInputs(
            first.config,
            model,
            {},
            first.context.state,
            cfg.batch_size,
            data,
            first.partition_id,
            first.context.node_id,
            lr=cfg.optimizer.lr,
            local_steps=num_local_steps(len(data.y), cfg),
            loss=cross_entropy,  # the only client.loss trained together
        )
        step = first.step_cls(inputs)
    except Exception:  # arrays that do not fit, a bad config: the ClientApp reports it
        return [None] * len(chunk)
    try:
        results = train_stacked(model, step, chunk)
    except Exception as exc:  # vmap cannot run this model (data-dependent control flow...)
        what = (str(exc).splitlines() or [""])[0][:200]
        _say(
            first.context,
            f"model {scenario.model.name!r} cannot be stacked ({type(exc).__name__}: {what})",
        )
        return [None] * len(chunk)
    share = (time.perf_counter() - start) / len(chunk)
    return [
        _reply(c, arrays, loss, samples, share)
        for c, (arrays, loss, samples) in zip(chunk, results, strict=True)
    ]


def _unstackable(model: nn.Module, arrays: ArrayRecord) -> str | None:
    """Why ``model`` cannot be trained as a stack (None: it can)."""
    if any(True for _ in model.buffers()):
        return "models with buffers (BatchNorm) train one by one"
    for module in model.modules():
        if isinstance(module, _UNSTACKABLE) or type(module).__module__.startswith("fedsim.kernels"):
            return f"models with {type(module).__name__} layers train one by one"
    names = {n for n, _ in model.named_parameters()}
    if set(arrays.keys()) != names:
        return "messages with extra or withheld arrays train one by one"
    if not all(p.requires_grad for p in model.parameters()):
        return "models with frozen parameters train one by one"
    return None


def _reply(
    client: StackedJob, arrays: dict[str, np.ndarray], loss: float, samples: int, duration: float
) -> Message:
    """The reply the ClientApp's train handler gives (see :mod:`fedsim.client.app`)."""
    metrics = filled(  # what the handler puts there, in its order (Python numbers)
        _EMPTY_METRICS,
        {
            wire.NUM_EXAMPLES: len(client.data.y),
            wire.TRAIN_SAMPLES: samples,
            wire.DURATION_S: duration,
            wire.TRAIN_LOSS: loss,
        },
    )
    record = filled(_EMPTY_ARRAYS, {name: encode(value) for name, value in arrays.items()})
    content = filled(_EMPTY_CONTENT, {wire.ARRAYS: record, wire.METRICS: metrics})
    return Message(content, reply_to=client.message)
