"""One pass over a client's whole data: the summed gradient, or the summed squared ones.

Three algorithms need a gradient over all of a node's examples at one fixed model
(no optimizer step): SCAFFOLD's option I (``c_i+ = g_i(x)``), AGC's coded gradient
(each example's gradient weighted by its holder count) and FedCurv's Fisher diagonal
(the mean of squared per-example gradients). They differ only in the batch order, the
per-example weights and whether per-example gradients are squared before they are
summed, so they share :func:`full_data_gradient`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from fedsim.client.losses import LossFn
from fedsim.kernels.oracle import per_example_grads_func, per_example_grads_loop


@dataclass(frozen=True)
class FullGradient:
    """What one pass over the data summed.

    Attributes
    ----------
    sums : dict of str to Tensor
        Per named parameter: ``Σ_x w(x)·g(x)`` (or ``Σ_x g(x)²`` when squared), zeros
        for a parameter the loss does not reach.
    loss_sum : float or None
        ``Σ_x ℓ(x)``, unweighted (None when squared: the per-example path does not
        evaluate the loss outside its gradient transforms).
    examples : int
        Examples the batches covered (an example in two batches counts twice).
    """

    sums: dict[str, torch.Tensor]
    loss_sum: float | None
    examples: int

    def mean(self) -> dict[str, torch.Tensor]:
        """Each sum divided by the examples covered (the sums themselves when none)."""
        return {n: s / max(self.examples, 1) for n, s in self.sums.items()}


def _in_order(n: int, batch_size: int) -> Iterator[torch.Tensor]:
    """Index batches ``[0, b), [b, 2b), ...`` over ``n`` examples, unshuffled."""
    for start in range(0, n, batch_size):
        yield torch.arange(start, min(start + batch_size, n))


def full_data_gradient(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    order: Iterable[torch.Tensor] | None = None,
    weights: torch.Tensor | None = None,
    squared: bool = False,
) -> FullGradient:
    """Sum per-example gradients of ``loss_fn`` at ``model`` over ``batches`` of the data.

    Parameters
    ----------
    model : nn.Module
        The model at which the gradients are taken; put in training mode (as the local
        loop trains it) and left unchanged (no ``.grad`` is left behind).
    loss_fn : callable
        Per-example loss ``(logits, targets) -> (B,)``.
    x, y : Tensor
        The node's examples and targets, on the model's device.
    batch_size : int
        Examples per forward pass (memory, and the summation order, not the result's
        meaning): ``[0, b), [b, 2b), ...`` unless ``order`` is given.
    order : iterable of Tensor, optional
        Index batches into ``x``/``y`` to sum over instead (e.g. the local loop's
        shuffled :func:`fedsim.client.loop.batches`, for training's summation order).
    weights : Tensor, optional
        Per-example weights ``w(x)`` (shape ``(len(y),)``); None: all ones.
    squared : bool
        Sum ``g(x)²`` (elementwise) instead of ``w(x)·g(x)``: the empirical Fisher's
        numerator. Per-example gradients come from ``torch.func`` (batch-of-one
        backward passes for layers it cannot vectorise, such as fedsim's LSTM).

    Returns
    -------
    FullGradient
        The sums per named parameter, the loss sum and the examples covered.
    """
    model.train()
    named = dict(model.named_parameters())
    trained = [n for n, p in named.items() if p.requires_grad]
    totals: dict[str, torch.Tensor] = {}
    loss_total = 0.0
    examples = 0
    if squared and weights is not None:
        raise ValueError("squared per-example gradients take no weights")
    for idx in _in_order(len(y), batch_size) if order is None else order:
        xb, yb = x[idx], y[idx]
        examples += len(idx)
        if squared:
            try:
                per_example = per_example_grads_func(model, loss_fn, xb, yb)
            except (RuntimeError, NotImplementedError):
                per_example = per_example_grads_loop(model, loss_fn, xb, yb)
            grads = {n: g.pow(2).sum(0) for n, g in per_example.items()}
        else:
            losses = loss_fn(model(xb), yb)
            weighted = losses if weights is None else losses * weights[idx]
            found = torch.autograd.grad(
                weighted.sum(), [named[n] for n in trained], allow_unused=True
            )
            grads = {n: g for n, g in zip(trained, found, strict=True) if g is not None}
            loss_total += float(losses.detach().sum())
        for n, g in grads.items():  # summed in batch order, as the loops did before
            totals[n] = totals[n] + g if n in totals else g
    sums = {n: totals[n] if n in totals else torch.zeros_like(p) for n, p in named.items()}
    return FullGradient(sums, None if squared else loss_total, examples)
