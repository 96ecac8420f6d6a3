"""The stacked training of one chunk (``engine.batch_clients``; see :mod:`fedsim.client.stacked`).

Each client's batch schedule, the stacked gradients (``vmap`` over ``functional_call``,
or the batched MLP kernel) and the loop that steps the whole stack with the
optimizer's update rule, on the chunk's device.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.func import functional_call, grad, vmap

from fedsim import wire
from fedsim.client.loop import clients_batch_rows, num_local_steps
from fedsim.client.losses import cross_entropy
from fedsim.client.optimizers import update_rule
from fedsim.client.stacked_dp import StackedPrivateGradient
from fedsim.client.stacked_steps import StackedStep
from fedsim.client.steps import LocalStep
from fedsim.data.node_data import NodeData
from fedsim.kernels import mlp_linears, stacked_mlp_cross_entropy_grad
from fedsim.training_device import on_device

if TYPE_CHECKING:
    from fedsim.client.stacked_jobs import StackedJob


@dataclass(frozen=True)
class Schedule:
    """Step ``t`` of the stacked clients: who still trains, and on which examples."""

    active: int  # clients 0..active-1 of the (step-count ordered) stack
    index: torch.Tensor  # (active, B) rows of the concatenated data
    scale: torch.Tensor  # (active, B): 1/batch for a real example, 0 for padding
    real: torch.Tensor  # (active, B): 1 for a real example, 0 for padding
    samples: NDArray[np.int64]  # (active,) real batch size of each active client


def schedule(
    chunk: list[StackedJob], device: str, dtype: torch.dtype = torch.float32
) -> list[Schedule]:
    """Each client's batches, in the order its ClientApp job would draw them.

    The chunk's clients come most steps first, so at every step the clients still
    training are the first rows of the stack. The index, weight and mask tensors are
    built on the host and moved to ``device`` once for the whole chunk. The weights
    ``1/batch`` are in the model's ``dtype``: a float32 ``1/3`` is 3e-8 off, which a
    float64 model's update would carry (Adam amplifies it where a gradient nearly
    cancels), while the one-by-one path divides by the batch size in float64.
    """
    cfg = chunk[0].scenario.client
    sizes_n = [len(c.data.y) for c in chunk]
    offsets = np.cumsum([0, *sizes_n[:-1]])
    rows = clients_batch_rows(
        sizes_n, cfg, [num_local_steps(n, cfg) for n in sizes_n], [c.seed for c in chunk]
    )
    steps, width = max(len(r) for r in rows), max(r.shape[1] for r in rows)
    index = np.full((steps, len(chunk), width), -1, dtype=np.int64)
    for k, r in enumerate(rows):
        index[: r.shape[0], k, : r.shape[1]] = r
    real_mask = index >= 0
    sizes = real_mask.sum(2)
    # Padding reads row 0 with weight 0.
    index = np.where(real_mask, index + offsets[None, :, None], 0)
    real_np = real_mask.astype(np.float32)
    # In float64, then rounded once to the model's dtype (float32: the same value).
    scale_np = real_np.astype(np.float64) / np.maximum(sizes, 1)[:, :, None]
    # Who still trains at step t: by step count, not batch size (a Poisson batch may
    # be empty at a step its client still takes).
    active = (np.array([len(r) for r in rows])[None, :] > np.arange(steps)[:, None]).sum(1)
    index_t = torch.from_numpy(index).to(device)
    scale_t = torch.from_numpy(scale_np).to(device=device, dtype=dtype)
    real_t = torch.from_numpy(real_np).to(device)
    return [
        Schedule(int(a), index_t[t, :a], scale_t[t, :a], real_t[t, :a], sizes[t, :a])
        for t, a in enumerate(active)
    ]


def _gather(
    x: torch.Tensor, y: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x[index], y[index]`` for an (active, B) index: ``index_select`` on the flat rows.

    The same rows; advanced indexing takes ~4x as long on the CPU for these shapes.
    """
    flat = index.reshape(-1)
    xs = x.index_select(0, flat).reshape(*index.shape, *x.shape[1:])
    return xs, y.index_select(0, flat).reshape(index.shape)


GradientFn = Callable[
    [Mapping[str, torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor],
    tuple[dict[str, torch.Tensor], torch.Tensor],
]


def stacked_gradient(model: nn.Module, stacked: StackedStep) -> GradientFn:
    """Per-client gradients of the data loss (+ the step's penalty) for stacked parameters."""
    step = stacked.first
    has_penalty = step.penalty(dict(model.named_parameters())) is not None
    linears = mlp_linears(model)
    plain_loss = type(step).data_loss is LocalStep.data_loss and step.loss is cross_entropy
    if linears is not None and plain_loss and not any(d == 0 for d in stacked.dims):
        return mlp_gradient(model, linears, step, has_penalty)

    def client_loss(
        params: Mapping[str, torch.Tensor],
        values: list[torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        own = stacked.view(values)  # this client's step (its own tensors)
        losses = own.data_loss(functional_call(model, dict(params), (x,)), y)
        total = (losses * w).sum()
        penalty = own.penalty(params) if has_penalty else None
        if penalty is not None:
            total = total + penalty
        return total, losses.detach()

    return vmap(grad(client_loss, has_aux=True), in_dims=(0, list(stacked.dims), 0, 0, 0))


def mlp_gradient(
    model: nn.Module, linears: list[nn.Linear], step: LocalStep, has_penalty: bool
) -> GradientFn:
    """The batched-matmul gradient of plain MLPs under cross-entropy (steps sharing tensors)."""
    names = {id(p): n for n, p in model.named_parameters()}
    w_names = [names[id(layer.weight)] for layer in linears]
    b_names = [None if layer.bias is None else names[id(layer.bias)] for layer in linears]
    penalty_grad = vmap(grad(step.penalty)) if has_penalty else None

    def gradient(
        params: Mapping[str, torch.Tensor],
        values: list[torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
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


# The last chunk's concatenated examples, with the node data they were made from: with
# full participation a round's chunk holds the same clients in the same order as the
# last round's, and the copy (a whole dataset's bytes) is not made again.
_last_chunk: list[tuple[list[NodeData], tuple[torch.Tensor, torch.Tensor]]] = []


def chunk_data(chunk: list[StackedJob], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk's examples, concatenated on ``device`` (each node's moved there once)."""
    if device == "cpu":
        held = [c.data for c in chunk]
        if _last_chunk and len(_last_chunk[0][0]) == len(held):
            last, tensors = _last_chunk[0]
            if all(a is b for a, b in zip(last, held, strict=True)):
                return tensors
        x = torch.from_numpy(np.concatenate([d.x for d in held]))
        y = torch.from_numpy(np.concatenate([d.y for d in held]))
        _last_chunk[:] = [(held, (x, y))]
        return x, y
    xs, ys = [], []
    for c in chunk:
        context = c.context
        key = (context.run_id, str(context.run_config.get(wire.RUN_DIR, "")), c.partition_id)
        xs.append(on_device(c.data.x, device, (*key, "stacked-x")))
        ys.append(on_device(c.data.y, device, (*key, "stacked-y")))
    return torch.cat(xs), torch.cat(ys)


Result = tuple[dict[str, np.ndarray], float, int, int]  # arrays, mean loss, samples, steps


@dataclass(frozen=True)
class ChunkResult:
    """What a chunk's clients did: their trained arrays stacked on a leading client axis."""

    values: dict[str, np.ndarray]  # name -> (clients, *shape), on the host
    mean_losses: list[float]
    samples: list[int]
    steps: list[int]

    def rows(self) -> list[Result]:
        """Per client: its arrays (row views of :attr:`values`), mean loss, samples, steps."""
        values = self.values
        return [
            ({n: v[k] for n, v in values.items()}, loss, n_samples, n_steps)
            for k, (loss, n_samples, n_steps) in enumerate(
                zip(self.mean_losses, self.samples, self.steps, strict=True)
            )
        ]


def train_stacked(model: nn.Module, stacked: StackedStep, chunk: list[StackedJob]) -> ChunkResult:
    """Train the chunk's clients from the model's weights; per client what it did."""
    cfg = chunk[0].scenario.client
    device = chunk[0].device
    rule = update_rule(cfg.optimizer)
    steps = [num_local_steps(len(c.data.y), cfg) for c in chunk]
    if any(a < b for a, b in itertools.pairwise(steps)):
        raise ValueError("a chunk's clients are ordered by step count (train_together)")
    x, y = chunk_data(chunk, device)
    model.train()
    names = [n for n, _ in model.named_parameters()]
    params_now = {
        n: p.detach().unsqueeze(0).expand(len(chunk), *p.shape).clone()
        for n, p in model.named_parameters()
    }
    states = {n: rule.new_state() for n in names}
    loss_sums = torch.zeros(len(chunk), dtype=torch.float64, device=device)
    samples = np.zeros(len(chunk), dtype=np.int64)
    taken = np.zeros(len(chunk), dtype=np.int64)
    gradient: GradientFn = stacked_gradient(model, stacked)
    if cfg.dp is not None:
        gradient = StackedPrivateGradient(
            model,
            stacked,
            cfg.dp,
            [float(min(cfg.batch_size, len(c.data.y))) for c in chunk],
            [c.seed + 1 for c in chunk],  # the ClientApp's noise generator seed
        )
    dtype = next(model.parameters()).dtype
    for t, s in enumerate(schedule(chunk, device, dtype)):
        a = s.active
        params = {n: params_now[n][:a] for n in names}
        grads, losses = gradient(params, stacked.rows(a), *_gather(x, y, s.index), s.scale)
        correction = stacked.correction(params, a)
        with torch.no_grad():
            for n in names:
                g = grads[n]
                if correction is not None and n in correction:
                    g = g + correction[n]
                state = [None if b is None else b[:a] for b in states[n]]
                rule.update_(params[n], g, state, t + 1)
                if t == 0:  # made at the first step, when every client is active
                    states[n] = state
            loss_sums[:a] += (losses * s.real).sum(1, dtype=torch.float64)
        samples[:a] += s.samples
        taken[:a] += 1
    # One device-to-host copy per array for the whole chunk; nothing writes to them.
    values = {n: params_now[n].cpu().numpy() for n in names}
    for value in values.values():
        value.flags.writeable = False
    counts = [max(int(n), 1) for n in samples]
    return ChunkResult(
        values,
        [float(v) / c for v, c in zip(loss_sums.cpu().tolist(), counts, strict=True)],
        samples.tolist(),
        taken.tolist(),
    )
