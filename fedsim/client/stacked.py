"""Many nodes' train jobs in one computation over stacked parameters (``engine.batch_clients``).

:func:`train_together` takes train messages (each with its node's Context) that the
ClientApp would handle one by one and trains the clients together: their parameters
stacked along a leading axis, each step one batched gradient (``torch.func``'s
``vmap`` over ``functional_call``, or for a plain MLP under cross-entropy the batched
matrix products of :func:`fedsim.kernels.stacked_mlp_cross_entropy_grad`) and one
elementwise optimizer update of the whole stack. Each client still takes exactly the
updates it would take alone:

- its batch order is drawn by :func:`fedsim.client.training.batch_spans` from the
  generator its ClientApp job would seed (:func:`fedsim.client.app.job_seed`), and a
  step gathers every client's batch by one index tensor (no loop over clients);
- a last partial batch is padded and the padding weighs nothing in its loss;
- clients are ordered by step count, so the clients still training form a prefix of
  the stack and the finished ones are left alone (optimizer state included);
- each client has its own local step, built from its own inputs as the ClientApp
  builds it (its ``context.state``, its extras, its ``client.loss`` with its label
  prior); :class:`fedsim.client.stacked_steps.StackedStep` stacks the steps' tensors,
  so ``data_loss``, ``penalty`` and ``correction`` (SCAFFOLD's ``c - c_i``, FedCurv's
  sums less the client's own terms) run per client inside the stacked computation;
- the update is the optimizer's :class:`~fedsim.client.optimizers.UpdateRule` (SGD with
  momentum and weight decay, Adam), the code the one training loop
  (:func:`fedsim.client.training.train_local`) steps each client with;
- a step with its own ``reply`` (SCAFFOLD, FedCurv) gets each client's trained model
  and replies as in the ClientApp.

The training device is the node's (``engine.device``: CPU or CUDA). A node's examples
are moved there once per process and kept; the trained parameters leave the device in
one copy per array and chunk.

So a reply equals the ClientApp's up to float rounding (tests hold them within 1e-5
relative). A job that cannot be trained this way gets None, and the caller runs the
ClientApp as usual: not a train message, a step whose class is not ``vectorisable``
(undeclared custom steps), a step that does not train the whole received model, a
step that refuses DP-SGD, low-precision weights, link compression, attackers, a model
with buffers (BatchNorm), dropout or recurrent layers, extra or withheld arrays, steps
whose tensors cannot be stacked, or a model that ``vmap`` cannot run (data-dependent
control flow). Each reason is said once per run (:class:`~fedsim.errors.FedsimWarning`),
never silently.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Collection, Hashable, Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message
from torch import nn

from fedsim import wire
from fedsim.array_codec import decode
from fedsim.client.chunk_size import auto_chunk
from fedsim.client.job import partition
from fedsim.client.loop import num_local_steps
from fedsim.client.losses import build_loss
from fedsim.client.model_cache import model_for_job
from fedsim.client.stacked_jobs import SentContent, StackedJob, read_content, seed_jobs
from fedsim.client.stacked_reply import chunk_replies, custom_reply
from fedsim.client.stacked_steps import StackedStep
from fedsim.client.stacked_training import train_stacked
from fedsim.client.steps import LocalStep, StepInputs
from fedsim.client.unread_keys import warn_unread
from fedsim.config.schema import Scenario
from fedsim.data.node_data import NodeData
from fedsim.errors import FedsimWarning
from fedsim.reply_chunk import ReplyChunk, TrainedTogether
from fedsim.run_config import scenario_of_run_config
from fedsim.training_device import client_device

# Layers whose forward pass draws random numbers or keeps state between calls: the
# stacked computation cannot reproduce the ClientApp's draws.
_UNSTACKABLE = (nn.modules.dropout._DropoutNd, nn.RNNBase)
_said: set[tuple[Hashable, str]] = set()  # (run, reason): each said once per run


def train_together(jobs: Sequence[tuple[Message, Context]], max_batch: int) -> list[Message | None]:
    """Train the train jobs that allow it together; return each job's reply or None.

    Parameters
    ----------
    jobs : sequence of (Message, Context)
        Train messages with their nodes' Contexts; both are only read, never changed
        (so the caller need not copy a message for this).
    max_batch : int
        At most this many clients train in one stacked computation; below 0
        (``engine.batch_clients: auto``): as many as :func:`auto_chunk` allows.

    Returns
    -------
    list of Message or None
        In the order of ``jobs``: the reply the ClientApp would have given (up to float
        rounding), or None where the job must go through the ClientApp. Nothing here
        raises for a bad job: it gets None and the ClientApp reports its error.
    """
    return train_chunks(jobs, max_batch).replies


def train_chunks(jobs: Sequence[tuple[Message, Context]], max_batch: int) -> TrainedTogether:
    """:func:`train_together`, with the stacked replies also as columns (see ReplyChunk)."""
    out: list[Message | None] = [None] * len(jobs)
    chunks: list[ReplyChunk] = []
    groups: dict[tuple[Any, ...], list[StackedJob]] = {}
    sent: dict[int, SentContent] = {}  # what each content says, read once
    resolved = [_resolve(i, m, c, sent) for i, (m, c) in enumerate(jobs)]
    seed_jobs(c for c in resolved if c is not None)
    for client in resolved:
        if client is not None:
            groups.setdefault(_group_key(client), []).append(client)
    for members in groups.values():
        # Most steps first: the clients still training are a prefix of the stack. Then by
        # partition, so that a round's stack holds its clients in the same rows whatever
        # order the strategy sampled them in (the rows train independently; a chunk of the
        # same clients as the last one reuses its examples, see chunk_data).
        cfg = members[0].scenario.client
        members.sort(key=lambda c: (-num_local_steps(len(c.data.y), cfg), c.partition_id))
        size = max(1, max_batch) if max_batch >= 0 else _auto_size(members[0])
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            replies, columns = _train_chunk(chunk)
            for client, reply in zip(chunk, replies, strict=True):
                out[client.index] = reply
            if columns is not None:
                chunks.append(columns)
    trained = [c for g in groups.values() for c in g if out[c.index] is not None]
    if trained:
        # As after the last of these jobs had run through the ClientApp (which leaves
        # torch's default generator seeded with its job seed).
        torch.default_generator.manual_seed(max(trained, key=lambda c: c.index).seed)
    return TrainedTogether(out, chunks)


def _auto_size(client: StackedJob) -> int:
    """``engine.batch_clients: auto``: the chunk size for ``client``'s group."""
    try:
        model = _model(client)
    except Exception:  # _train_chunk meets it again, and the ClientApp reports it
        return 1
    data = client.data
    return auto_chunk(model, data.input_shape, client.scenario.client.batch_size, client.device)


def _model(client: StackedJob, overwritten: Collection[str] = ()) -> nn.Module:
    """The process's model of ``client``'s architecture on its device (see model_for_job)."""
    scenario, data = client.scenario, client.data
    return model_for_job(
        scenario.model.name,
        scenario.model.params,
        data.input_shape,
        data.num_classes,
        overwritten=overwritten,
        device=client.device,
    )


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
    scenario = scenario_of_run_config(context.run_config)  # per run-config object
    hit = _nodes.get(id(context))
    if hit is not None and hit[0] is context and hit[1] is scenario:
        return scenario, hit[2], hit[3]
    first = next(iter(_nodes.values()), None)  # all entries share one scenario
    if first is not None and first[1] is not scenario:
        _nodes.clear()  # another run: forget the last one's nodes
    scenario, pid, data = partition(context)
    _nodes[id(context)] = (context, scenario, pid, data)
    return scenario, pid, data


def _resolve(
    index: int, message: Message, context: Context, sent: dict[int, SentContent]
) -> StackedJob | None:
    """The job's client if it can be trained together with others, else None.

    ``sent`` keeps what each message content says: Flower's strategies send one content
    to every node of a round, so it is read once per round.
    """
    if message.metadata.message_type != "train" or not message.has_content():
        return None  # not what the ClientApp's plain train handler does
    try:
        scenario, pid, data = _node(context)
    except Exception:  # the ClientApp reports it
        return None
    said = sent.get(id(message.content))
    if said is None or said.content is not message.content:
        said = sent[id(message.content)] = read_content(message)
    step_cls = said.step_cls
    if step_cls is None:
        return None
    verdict = said.verdicts.get(id(scenario))
    if verdict is None or verdict[0] is not scenario:  # once per content and scenario
        verdict = (scenario, *_verdict(scenario, step_cls, said.config, context))
        said.verdicts[id(scenario)] = verdict
    _, refused, reason = verdict
    if refused:
        return None
    if reason is not None:
        _say(context, reason)
        return None
    if len(data.y) == 0 or said.arrays is None:
        return None
    device = client_device(scenario.engine.device, context.node_config)
    return StackedJob(
        index,
        message,
        context,
        scenario,
        pid,
        data,
        said.config,
        said.arrays,
        said.server_round,
        step_cls,
        device,
        said.key,
    )


def _verdict(
    scenario: Scenario, step_cls: type[LocalStep], config: dict[str, Any], context: Context
) -> tuple[bool, str | None]:
    """(the ClientApp refuses the job, why it trains one by one) for one content's jobs.

    ``(False, None)``: they may be trained together (their unread config keys are then
    warned of, as the ClientApp's train handler does, once per run).
    """
    if scenario.client.dp is not None and step_cls.dp_refusal is not None:
        return True, None  # the ClientApp refuses it (validation already does)
    reason = _refusal(scenario) or _step_refusal(step_cls)
    if reason is None and config.get(wire.LABEL_FLIP):
        reason = "label-flip attackers"
    if reason is None:
        warn_unread(_run_key(context), step_cls, config)
    return False, reason


def _refusal(scenario: Scenario) -> str | None:
    """Why no job of ``scenario`` can be trained together (None: they may be)."""
    cfg = scenario.client
    if cfg.weights is not None:
        return "client.weights (low-precision weights) trains one by one"
    if scenario.compression.active:
        return "compression codes each client's link"
    if scenario.system.attackers is not None:
        return "system.attackers changes attackers' replies"
    return None


def _step_refusal(step_cls: type[LocalStep]) -> str | None:
    """Why ``step_cls``'s clients cannot be trained together (None: they can)."""
    name = step_cls.__name__
    if not step_cls.vectorisable:
        return f"local step {name} is not vectorisable"
    if not step_cls.trains or step_cls.fills:
        return f"local step {name} does not train the whole received model"
    return None


def _group_key(client: StackedJob) -> tuple[Any, ...]:
    """Clients with equal keys share the model, the step and its hyperparameters."""
    data = client.data
    return (
        id(client.scenario),
        client.step_cls,
        client.device,
        *client.content_key,
        data.input_shape,
        data.num_classes,
        data.x.dtype,
    )


def _train_chunk(chunk: list[StackedJob]) -> tuple[list[Message | None], ReplyChunk | None]:
    """Train the clients of one group together.

    Returns their replies (None for each if they cannot be) and, for plain replies (no
    step's own ``reply``), the same replies as the chunk's columns.
    """
    start = time.perf_counter()
    first = chunk[0]
    scenario = first.scenario
    untrained: tuple[list[Message | None], None] = ([None] * len(chunk), None)
    try:
        model = _model(first, first.arrays.keys())
    except Exception:  # the ClientApp reports it
        return untrained
    reason = _unstackable(model, first.arrays)
    if reason is not None:
        _say(first.context, reason)
        return untrained
    try:
        own = frozenset(model.state_dict())
        model.load_state_dict({k: torch.from_numpy(decode(first.arrays[k])) for k in own})
        steps = [_step(model, own, c) for c in chunk]
        stacked = StackedStep(steps)
    except Exception:  # arrays that do not fit, a bad config: the ClientApp reports it
        return untrained
    try:
        result = train_stacked(model, stacked, chunk)
    except Exception as exc:  # vmap cannot run this model (data-dependent control flow...)
        what = (str(exc).splitlines() or [""])[0][:200]
        _say(
            first.context,
            f"model {scenario.model.name!r} cannot be stacked ({type(exc).__name__}: {what})",
        )
        return untrained
    if stacked.has_custom_reply:
        return [
            custom_reply(model, step, c, r, start)
            for c, step, r in zip(chunk, steps, result.rows(), strict=True)
        ], None
    return chunk_replies(chunk, result, (time.perf_counter() - start) / len(chunk))


def _step(model: nn.Module, own: frozenset[str], client: StackedJob) -> LocalStep:
    """The client's own local step, built as the ClientApp builds it (``own``: model keys)."""
    cfg, data = client.scenario.client, client.data
    inputs = StepInputs(
        client.config,
        model,
        {k: decode(v) for k, v in client.arrays.items() if k not in own},
        client.context.state,
        cfg.batch_size,
        data,
        client.partition_id,
        client.context.node_id,
        lr=cfg.optimizer.lr,
        local_steps=num_local_steps(len(data.y), cfg),
        loss=build_loss(cfg.loss, data.y, data.num_classes, data.global_label_counts),
    )
    return client.step_cls(inputs)


def _unstackable(model: nn.Module, arrays: ArrayRecord) -> str | None:
    """Why ``model`` cannot be trained as a stack (None: it can)."""
    if any(True for _ in model.buffers()):
        return "models with buffers (BatchNorm) train one by one"
    for module in model.modules():
        if isinstance(module, _UNSTACKABLE) or type(module).__module__.startswith("fedsim.kernels"):
            return f"models with {type(module).__name__} layers train one by one"
    if not set(model.state_dict()) <= set(arrays.keys()):
        return "messages that withhold model arrays train one by one"
    if not all(p.requires_grad for p in model.parameters()):
        return "models with frozen parameters train one by one"
    return None
