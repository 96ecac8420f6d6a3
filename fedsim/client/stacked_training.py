"""The stacked computation: the clients' batch schedule and training over stacked parameters."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.func import functional_call, grad, vmap

from fedsim.client.loop import batch_spans, num_local_steps
from fedsim.client.losses import cross_entropy
from fedsim.client.optimizers import sgd_update_
from fedsim.client.steps import LocalStep
from fedsim.kernels import mlp_linears, stacked_mlp_cross_entropy_grad

if TYPE_CHECKING:  # the stacked path imports this module
    from fedsim.client.stacked import StackedJob


GradientFn = Callable[
    [Mapping[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor],
    tuple[dict[str, torch.Tensor], torch.Tensor],
]


@dataclass(frozen=True)
class Schedule:
    """Step ``t`` of the stacked clients: who still trains, and on which examples."""

    active: int  # clients 0..active-1 of the (step-count ordered) stack
    index: torch.Tensor  # (active, B) rows of the concatenated data
    scale: torch.Tensor  # (active, B): 1/batch for a real example, 0 for padding
    real: torch.Tensor  # (active, B): 1 for a real example, 0 for padding
    samples: NDArray[np.int64]  # (active,) real batch size of each active client


def schedule(chunk: list[StackedJob], order: list[int]) -> list[Schedule]:
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
        Schedule(
            int(a),
            torch.from_numpy(index[t, :a]),
            torch.from_numpy(scale[t, :a]),
            torch.from_numpy(real[t, :a]),
            sizes[t, :a],
        )
        for t, a in enumerate(active)
    ]


def stacked_gradient(model: nn.Module, step: LocalStep) -> GradientFn:
    """Per-client gradients of the data loss (+ the step's penalty) for stacked parameters."""
    has_penalty = step.penalty(dict(model.named_parameters())) is not None
    linears = mlp_linears(model)
    plain_loss = type(step).data_loss is LocalStep.data_loss and step.loss is cross_entropy
    if linears is not None and plain_loss:
        return mlp_gradient(model, linears, step, has_penalty)

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


def mlp_gradient(
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


def train_stacked(
    model: nn.Module, step: LocalStep, chunk: list[StackedJob]
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
    gradient = stacked_gradient(model, step)
    for s in schedule(chunk, order):
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
