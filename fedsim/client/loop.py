"""The one local training loop.

Algorithms change it only through a :class:`LocalStep`, and differential privacy only
through the gradient it plugs in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fedsim.client.losses import LossFn, cross_entropy
from fedsim.client.optimizers import LocalOptimizer, make_optimizer
from fedsim.client.steps import LocalStep, TrainResult
from fedsim.config.schema import ClientConfig
from fedsim.kernels import mlp_cross_entropy_grad, mlp_linears

__all__ = ["Gradient", "TrainResult", "batch_spans", "batches", "num_local_steps", "train_local"]

# Fills p.grad for one batch; returns the per-example losses.
Gradient = Callable[[nn.Module, LossFn, torch.Tensor, torch.Tensor], torch.Tensor]


def num_local_steps(num_examples: int, cfg: ClientConfig) -> int:
    """Return the optimizer steps one job takes (``local_steps`` or epochs x batches)."""
    if cfg.local_steps is not None:
        return cfg.local_steps
    return cfg.local_epochs * math.ceil(num_examples / min(cfg.batch_size, num_examples))


def plain_gradient(
    model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Ordinary gradient of the mean batch loss."""
    losses = loss_fn(model(x), y)
    losses.mean().backward()
    return losses.detach()


def default_gradient(model: nn.Module, step: LocalStep) -> Gradient:
    """The non-private gradient for ``model`` under ``step``.

    A plain MLP (:func:`fedsim.kernels.mlp_linears`) trained on the plain cross-entropy
    (``client.loss`` left at its default, and a step that keeps the base ``data_loss``)
    gets its gradient from :func:`fedsim.kernels.mlp_cross_entropy_grad`, without
    autograd's fixed costs; every other model or loss goes through autograd.
    """
    linears = mlp_linears(model)
    plain_loss = type(step).data_loss is LocalStep.data_loss and step.loss is cross_entropy
    if linears is None or not plain_loss:
        return plain_gradient
    mlp = linears  # a name the closure can see as non-None (mypy does not narrow captures)

    def gradient(
        model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        if y.dim() != 1:  # not class targets: let autograd (and its errors) handle it
            return plain_gradient(model, loss_fn, x, y)
        return mlp_cross_entropy_grad(mlp, x, y)

    return gradient


def batches(
    n: int, cfg: ClientConfig, steps: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Index batches for ``steps`` steps (see :func:`batch_spans` for how they are drawn)."""
    for order, span in batch_spans(n, cfg, steps, generator):
        yield order[span]


def batch_spans(
    n: int, cfg: ClientConfig, steps: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, slice]]:
    """Each of ``steps`` batches as an index tensor and the slice of it the batch is.

    Reshuffled epochs of ``batch_size`` by default (one permutation, several batches).
    Under DP-SGD each batch is drawn afresh, as its accounting assumes: with
    ``client.dp.sampling: poisson`` every example joins each batch independently with
    probability ``batch_size / n``; with ``fixed`` each batch is a uniformly random subset
    of exactly ``batch_size`` examples (sampling without replacement within a batch,
    independently across batches; an epoch's reshuffled partition would not match the
    accountant's bound). The one batch order: :func:`batches` slices these, and the
    vectorised path (:mod:`fedsim.client.stacked`) reads them without torch slices.
    """
    batch = min(cfg.batch_size, n)
    if cfg.dp is not None and cfg.dp.sampling == "poisson":
        q = batch / n
        for _ in range(steps):
            yield torch.nonzero(torch.rand(n, generator=generator) < q).flatten(), slice(None)
        return
    if cfg.dp is not None:
        for _ in range(steps):
            yield torch.randperm(n, generator=generator), slice(0, batch)
        return
    taken = 0
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch):
            if taken == steps:
                return
            yield order, slice(start, start + batch)
            taken += 1


def clients_batch_rows(
    sizes: Sequence[int], cfg: ClientConfig, steps: Sequence[int], seeds: Sequence[int]
) -> list[NDArray[np.int64]]:
    """The batches of :func:`batch_spans` of many clients, each client's as rows.

    Client ``k`` has ``sizes[k]`` examples and takes ``steps[k]`` steps from a generator
    seeded with ``seeds[k]``; its ``(steps[k], width)`` array holds batch ``t``'s example
    indices in row ``t``, then ``-1`` up to the widest batch. Tests hold it equal to
    :func:`batch_spans`.

    The stacked path builds every client's rows each round, so a Python step per batch
    would cost more than the stacked training step itself. Reshuffled epochs are drawn
    as :func:`batch_spans` draws them (one generator, reseeded per client) and cut into
    batches for all clients of one size at once; the DP draws come from
    :func:`batch_spans` itself.
    """
    if cfg.dp is not None:
        return [_drawn_rows(n, cfg, t, s) for n, t, s in zip(sizes, steps, seeds, strict=True)]
    generator = torch.Generator()
    orders: list[torch.Tensor] = []  # every client's epochs, one permutation each
    epochs: list[int] = []
    for n, t, seed in zip(sizes, steps, seeds, strict=True):
        generator.manual_seed(seed)
        per_epoch = -(-n // min(cfg.batch_size, n))
        epochs.append(max(1, -(-t // per_epoch)))
        orders.extend(torch.randperm(n, generator=generator) for _ in range(epochs[-1]))
    # Clients of one size and step count are cut into batches together.
    groups: dict[tuple[int, int], list[int]] = {}
    for k, key in enumerate(zip(sizes, steps, strict=True)):
        groups.setdefault(key, []).append(k)
    starts = np.cumsum([0, *epochs[:-1]]).tolist()
    rows: list[NDArray[np.int64]] = [np.empty((0, 0), dtype=np.int64)] * len(sizes)
    for (n, t), members in groups.items():
        batch, count = min(cfg.batch_size, n), epochs[members[0]]
        per_epoch = -(-n // batch)
        drawn = torch.stack([orders[starts[k] + e] for k in members for e in range(count)])
        padded = np.full((len(members), count, per_epoch * batch), -1, dtype=np.int64)
        padded[:, :, :n] = drawn.numpy().reshape(len(members), count, n)
        cut = padded.reshape(len(members), count * per_epoch, batch)[:, :t]
        for k, client_rows in zip(members, cut, strict=True):
            rows[k] = client_rows
    return rows


def _drawn_rows(n: int, cfg: ClientConfig, steps: int, seed: int) -> NDArray[np.int64]:
    """One client's :func:`batch_spans` batches as rows padded with ``-1`` (any sampling)."""
    generator = torch.Generator().manual_seed(seed)
    drawn = [order[span].numpy() for order, span in batch_spans(n, cfg, steps, generator)]
    rows = np.full((steps, max((len(d) for d in drawn), default=0)), -1, dtype=np.int64)
    for t, d in enumerate(drawn):
        rows[t, : len(d)] = d
    return rows


def train_local(
    model: nn.Module,
    x: NDArray[np.float32] | torch.Tensor,
    y: NDArray[np.int64] | torch.Tensor,
    cfg: ClientConfig,
    step: LocalStep,
    generator: torch.Generator,
    gradient: Gradient = plain_gradient,
    optimizer: LocalOptimizer | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``(x, y)`` with the injected ``step`` and ``gradient``.

    Each of :func:`num_local_steps` steps fills ``p.grad`` from the data loss (plainly,
    or privately when ``gradient`` is a DP-SGD gradient), adds the step's penalty
    gradient and its gradient correction (data-independent, so they cost no privacy),
    and takes an optimizer step;
    ``after_step(model)`` then runs (low-precision weights project the model there).
    ``optimizer`` (over ``model``'s parameters) carries state from an earlier job, such
    as momentum; by default every job starts a fresh ``client.optimizer``.
    """
    model.train()
    if optimizer is None:
        optimizer = make_optimizer(model.parameters(), cfg.optimizer)
    # Tensors already on the model's device (fedsim.training_device.on_device), or arrays.
    xt = x if isinstance(x, torch.Tensor) else torch.from_numpy(x)
    yt = y if isinstance(y, torch.Tensor) else torch.from_numpy(y)
    total_steps = num_local_steps(len(y), cfg)
    tally = LossTally(on_host=xt.device.type == "cpu")
    samples, taken = 0, 0
    for idx in batches(len(y), cfg, total_steps, generator):
        optimizer.zero_grad(set_to_none=True)
        losses = gradient(model, step.data_loss, xt[idx], yt[idx])
        params = dict(model.named_parameters())
        penalty = step.penalty(params)
        if penalty is not None:
            penalty.backward()
        correction = step.correction(params)
        if correction is not None:
            with torch.no_grad():
                for name, c in correction.items():
                    p = params[name]
                    p.grad = c.clone() if p.grad is None else p.grad.add_(c)
        optimizer.step()
        if after_step is not None:
            after_step(model)
        tally.add(losses)
        samples += len(idx)
        taken += 1
    return TrainResult(mean_loss=tally.total() / max(samples, 1), samples=samples, steps=taken)


class LossTally:
    """The sum of a job's per-example losses, step after step.

    Each step's float32 sum is added in float64 (a Python float's arithmetic). On the
    host that is a Python float; on an accelerator (``on_host=False``) a float64 tensor
    on the device, read once at the end: reading it every step would make the host wait
    for the device at every step. Both add the same numbers in the same order.
    """

    def __init__(self, on_host: bool) -> None:
        self.on_host = on_host
        self.value = 0.0
        self.tensor: torch.Tensor | None = None

    def add(self, losses: torch.Tensor) -> None:
        """Add one step's losses."""
        if self.on_host:
            self.value += float(losses.sum())
            return
        step = losses.detach().sum().to(torch.float64)
        self.tensor = step if self.tensor is None else self.tensor + step

    def total(self) -> float:
        """The sum so far (one device read, where it is kept there)."""
        return self.value if self.tensor is None else self.value + float(self.tensor)
