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
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from numpy.typing import NDArray
from torch import nn
from torch.func import functional_call, grad, vmap

from fedsim import wire
from fedsim.array_codec import decode, encode
from fedsim.client.job import (
    TRAIN_PURPOSE,
    job_seed,
    partition,
    received_arrays,
    train_config,
)
from fedsim.client.loop import batch_spans, num_local_steps
from fedsim.client.losses import cross_entropy
from fedsim.client.model_cache import model_for_job
from fedsim.client.optimizers import sgd_update_
from fedsim.client.steps import LocalStep, StepInputs, select_step
from fedsim.client.unread_keys import warn_unread
from fedsim.config.schema import Scenario
from fedsim.data.node_data import NodeData
from fedsim.errors import FedsimWarning
from fedsim.fast_records import filled
from fedsim.kernels import mlp_linears, stacked_mlp_cross_entropy_grad
from fedsim.run_config import scenario_from_run_config
from fedsim.training_device import client_device

# Layers whose forward pass draws random numbers or keeps state between calls: the
# stacked computation cannot reproduce the ClientApp's draws.
_UNSTACKABLE = (nn.modules.dropout._DropoutNd, nn.RNNBase)
_said: set[tuple[Hashable, str]] = set()  # (run, reason): each said once per run
_EMPTY_ARRAYS, _EMPTY_METRICS, _EMPTY_CONTENT = ArrayRecord(), MetricRecord(), RecordDict()


@dataclass
class _Client:
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
    groups: dict[tuple[Any, ...], list[_Client]] = {}
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


def _resolve(index: int, message: Message, context: Context) -> _Client | None:
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
    return _Client(index, message, context, scenario, pid, data, config, arrays, seed, step_cls)


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


def _group_key(client: _Client) -> tuple[Any, ...]:
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


def _train_chunk(chunk: list[_Client]) -> list[Message | None]:
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
        results = _train_stacked(model, step, chunk)
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


@dataclass(frozen=True)
class _Schedule:
    """Step ``t`` of the stacked clients: who still trains, and on which examples."""

    active: int  # clients 0..active-1 of the (step-count ordered) stack
    index: torch.Tensor  # (active, B) rows of the concatenated data
    scale: torch.Tensor  # (active, B): 1/batch for a real example, 0 for padding
    real: torch.Tensor  # (active, B): 1 for a real example, 0 for padding
    samples: NDArray[np.int64]  # (active,) real batch size of each active client


def _schedule(chunk: list[_Client], order: list[int]) -> list[_Schedule]:
    """Each client's batches, in the order its ClientApp job would draw them.

    Clients are taken in ``order`` (most steps first), so at every step the clients
    still training are the first rows of the stack.
    """
    cfg = chunk[0].scenario.client
    offsets = np.cumsum([0] + [len(c.data.y) for c in chunk])
    spans = []
    for k in order:
        n = len(chunk[k].data.y)
        generator = torch.Generator().manual_seed(chunk[k].seed)
        spans.append(list(batch_spans(n, cfg, num_local_steps(n, cfg), generator)))
    counts = [[len(range(*span.indices(len(o)))) for o, span in s] for s in spans]
    steps, width = len(counts[0]), max(max(c) for c in counts)
    index = np.zeros((steps, len(order), width), dtype=np.int64)  # padding: row 0, weight 0
    sizes = np.zeros((steps, len(order)), dtype=np.int64)
    for row, (k, drawn, sized) in enumerate(zip(order, spans, counts, strict=True)):
        views: dict[int, NDArray[np.int64]] = {}  # an epoch's order serves several batches
        for t, ((tensor, span), c) in enumerate(zip(drawn, sized, strict=True)):
            values = views.get(id(tensor))
            if values is None:
                values = views[id(tensor)] = tensor.numpy() + offsets[k]
            index[t, row, :c] = values[span]
        sizes[: len(sized), row] = sized
    real = (np.arange(width) < sizes[:, :, None]).astype(np.float32)
    scale = real / np.maximum(sizes, 1)[:, :, None].astype(np.float32)
    active = (sizes > 0).sum(1)
    return [
        _Schedule(
            int(a),
            torch.from_numpy(index[t, :a]),
            torch.from_numpy(scale[t, :a]),
            torch.from_numpy(real[t, :a]),
            sizes[t, :a],
        )
        for t, a in enumerate(active)
    ]


GradientFn = Callable[
    [Mapping[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor],
    tuple[dict[str, torch.Tensor], torch.Tensor],
]


def _stacked_gradient(model: nn.Module, step: LocalStep) -> GradientFn:
    """Per-client gradients of the data loss (+ the step's penalty) for stacked parameters."""
    has_penalty = step.penalty(dict(model.named_parameters())) is not None
    linears = mlp_linears(model)
    plain_loss = type(step).data_loss is LocalStep.data_loss and step.loss is cross_entropy
    if linears is not None and plain_loss:
        return _mlp_gradient(model, linears, step, has_penalty)

    def client_loss(
        params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        losses = step.data_loss(functional_call(model, dict(params), (x,)), y)
        total = (losses * w).sum()
        penalty = step.penalty(params) if has_penalty else None
        if penalty is not None:
            total = total + penalty
        return total, losses.detach()

    return vmap(grad(client_loss, has_aux=True))


def _mlp_gradient(
    model: nn.Module, linears: list[nn.Linear], step: LocalStep, has_penalty: bool
) -> GradientFn:
    """The batched-matmul gradient of plain MLPs under cross-entropy."""
    names = {id(p): n for n, p in model.named_parameters()}
    w_names = [names[id(layer.weight)] for layer in linears]
    b_names = [None if layer.bias is None else names[id(layer.bias)] for layer in linears]
    penalty_grad = vmap(grad(step.penalty)) if has_penalty else None

    def gradient(
        params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        weights = [params[n] for n in w_names]
        biases: list[torch.Tensor | None] = [None if n is None else params[n] for n in b_names]
        w_grads, b_grads, losses = stacked_mlp_cross_entropy_grad(weights, biases, x, y, w)
        grads = dict(zip(w_names, w_grads, strict=True))
        for n, g in zip(b_names, b_grads, strict=True):
            if n is not None and g is not None:
                grads[n] = g
        if penalty_grad is not None:
            for n, g in penalty_grad(dict(params)).items():
                grads[n] = grads[n] + g
        return grads, losses

    return gradient


def _train_stacked(
    model: nn.Module, step: LocalStep, chunk: list[_Client]
) -> list[tuple[dict[str, np.ndarray], float, int]]:
    """Train the chunk's clients from the model's weights; per client (arrays, loss, samples)."""
    cfg = chunk[0].scenario.client
    opt = cfg.optimizer
    steps = [num_local_steps(len(c.data.y), cfg) for c in chunk]
    order = sorted(range(len(chunk)), key=lambda k: -steps[k])  # stable: ties keep order
    x = torch.from_numpy(np.concatenate([c.data.x for c in chunk]))
    y = torch.from_numpy(np.concatenate([c.data.y for c in chunk]))
    model.train()
    names = [n for n, _ in model.named_parameters()]
    stacked = {
        n: p.detach().unsqueeze(0).expand(len(chunk), *p.shape).clone()
        for n, p in model.named_parameters()
    }
    buffers: dict[str, torch.Tensor | None] = dict.fromkeys(names)
    loss_sums = torch.zeros(len(chunk), dtype=torch.float64)
    samples = np.zeros(len(chunk), dtype=np.int64)
    gradient = _stacked_gradient(model, step)
    for s in _schedule(chunk, order):
        a = s.active
        params = {n: stacked[n][:a] for n in names}
        grads, losses = gradient(params, x[s.index], y[s.index], s.scale)
        with torch.no_grad():
            for n in names:
                buf = buffers[n]
                new = sgd_update_(
                    params[n],
                    grads[n],
                    None if buf is None else buf[:a],
                    opt.lr,
                    opt.momentum,
                    opt.weight_decay,
                )
                if buf is None:
                    buffers[n] = new
            loss_sums[:a] += (losses * s.real).sum(1, dtype=torch.float64)
        samples[:a] += s.samples
    results: list[tuple[dict[str, np.ndarray], float, int]] = [({}, 0.0, 0)] * len(chunk)
    values = {n: stacked[n].numpy() for n in names}  # rows of these are contiguous views
    for row, k in enumerate(order):
        arrays = {n: values[n][row] for n in names}
        count = int(samples[row])
        results[k] = (arrays, float(loss_sums[row]) / max(count, 1), count)
    return results


def _reply(
    client: _Client, arrays: dict[str, np.ndarray], loss: float, samples: int, duration: float
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
