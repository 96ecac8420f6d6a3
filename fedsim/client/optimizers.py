"""Local optimizers by registry name (the ``client.optimizer.name`` key)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch

from fedsim.config.schema import OptimizerConfig
from fedsim.registry import Registry


class LocalOptimizer(Protocol):
    """What the training loop needs of an optimizer (any ``torch.optim.Optimizer`` has it)."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the parameters' gradients."""

    def step(self) -> Any:
        """Update the parameters from their gradients."""


OptimizerFactory = Callable[[Iterable[torch.nn.Parameter], OptimizerConfig], LocalOptimizer]
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizers")


class SGD:
    """``torch.optim.SGD``'s update (no dampening, no Nesterov), without its step wrapper.

    Every ``torch.optim.Optimizer.step`` runs through hooks and a profiler scope that
    cost more than the update of a small model (~45 of ~60 µs per step for a 1.7k-weight
    MLP). The arithmetic here is torch's single-tensor SGD, operation for operation, so
    results are bit-identical (a test compares the two).
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients (to None, or to zeros with ``set_to_none=False``)."""
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """Take one step on every parameter that has a gradient."""
        for i, param in enumerate(self.params):
            if param.grad is not None:
                self.momentum_buffers[i] = sgd_update_(
                    param,
                    param.grad,
                    self.momentum_buffers[i],
                    self.lr,
                    self.momentum,
                    self.weight_decay,
                )


def sgd_update_(
    param: torch.Tensor,
    grad: torch.Tensor,
    buf: torch.Tensor | None,
    lr: float,
    momentum: float,
    weight_decay: float,
) -> torch.Tensor | None:
    """Update ``param`` in place by one SGD step; return its momentum buffer.

    ``buf`` is the buffer of the previous step (None before the first, or without
    momentum); it is updated in place. The update is elementwise, so the same function
    steps one client's parameter and a stack of many clients' (the vectorised path of
    :mod:`fedsim.client.stacked`), slice for slice.
    """
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    if momentum != 0:
        if buf is None:
            buf = grad.detach().clone()
        else:
            buf.mul_(momentum).add_(grad, alpha=1)
        grad = buf
    param.add_(grad, alpha=-lr)
    return buf


@OPTIMIZERS.register("sgd", help="SGD with optional momentum and weight decay")
def sgd(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig) -> LocalOptimizer:
    """Plain (momentum) SGD."""
    return SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adam", help="Adam (momentum is ignored)")
def adam(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig) -> LocalOptimizer:
    """Adam with the configured learning rate and weight decay."""
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig) -> LocalOptimizer:
    """Build the optimizer ``cfg`` names."""
    return OPTIMIZERS.get(cfg.name)(params, cfg)
