"""Local optimizers by registry name (the ``client.optimizer.name`` key).

Each optimizer is an elementwise update rule (:class:`UpdateRule`) that steps one
client's parameter or a stack of many clients' parameters alike (a leading client
axis): the per-client loop (:class:`RuleOptimizer`) and the stacked path
(:mod:`fedsim.client.stacked`) run the same arithmetic.
"""

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


class UpdateRule(Protocol):
    """One optimizer's elementwise update of a parameter (or a stack of them)."""

    def new_state(self) -> list[torch.Tensor | None]:
        """The per-parameter state before the first step (filled lazily)."""

    def update_(
        self, param: torch.Tensor, grad: torch.Tensor, state: list[torch.Tensor | None], step: int
    ) -> None:
        """Update ``param`` in place by its ``step``-th step (1-based); update ``state``."""


RuleFactory = Callable[[OptimizerConfig], UpdateRule]
OPTIMIZERS: Registry[RuleFactory] = Registry("optimizers")


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


def adam_update_(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """One Adam step of ``param`` in place (``exp_avg``, ``exp_avg_sq`` updated too).

    torch's single-tensor Adam (no AMSGrad), operation for operation, so a client's
    steps equal ``torch.optim.Adam``'s (a test compares them); elementwise, so it steps
    a stack of clients (all at the same ``step``) slice for slice.
    """
    beta1, beta2 = betas
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr / (1 - beta1**step)
    denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)


class SGDRule:
    """:func:`sgd_update_` with the configured rate, momentum and weight decay."""

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay

    def new_state(self) -> list[torch.Tensor | None]:
        """One momentum buffer, made at the first step."""
        return [None]

    def update_(
        self, param: torch.Tensor, grad: torch.Tensor, state: list[torch.Tensor | None], step: int
    ) -> None:
        """One SGD step (see :func:`sgd_update_`)."""
        state[0] = sgd_update_(param, grad, state[0], self.lr, self.momentum, self.weight_decay)


class AdamRule:
    """:func:`adam_update_` with the configured rate and weight decay."""

    def __init__(self, lr: float, weight_decay: float = 0.0) -> None:
        self.lr, self.weight_decay = lr, weight_decay

    def new_state(self) -> list[torch.Tensor | None]:
        """First and second moments, made (as zeros) at the first step."""
        return [None, None]

    def update_(
        self, param: torch.Tensor, grad: torch.Tensor, state: list[torch.Tensor | None], step: int
    ) -> None:
        """One Adam step (see :func:`adam_update_`)."""
        exp_avg, exp_avg_sq = state
        if exp_avg is None or exp_avg_sq is None:
            exp_avg = state[0] = torch.zeros_like(param)
            exp_avg_sq = state[1] = torch.zeros_like(param)
        adam_update_(param, grad, exp_avg, exp_avg_sq, step, self.lr, self.weight_decay)


class RuleOptimizer:
    """One client's optimizer: an :class:`UpdateRule` over its parameters.

    A parameter without a gradient is skipped (its state and step count stay), as
    ``torch.optim`` does.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], rule: UpdateRule) -> None:
        self.params = list(params)
        self.rule = rule
        self.states = [rule.new_state() for _ in self.params]
        self.steps = [0] * len(self.params)

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
                self.steps[i] += 1
                self.rule.update_(param, param.grad, self.states[i], self.steps[i])


@OPTIMIZERS.register("sgd", help="SGD with optional momentum and weight decay")
def sgd(cfg: OptimizerConfig) -> UpdateRule:
    """Plain (momentum) SGD."""
    return SGDRule(cfg.lr, cfg.momentum, cfg.weight_decay)


@OPTIMIZERS.register("adam", help="Adam, betas (0.9, 0.999) (momentum is ignored)")
def adam(cfg: OptimizerConfig) -> UpdateRule:
    """Adam with the configured learning rate and weight decay (L2, as torch's Adam)."""
    return AdamRule(cfg.lr, cfg.weight_decay)


def update_rule(cfg: OptimizerConfig) -> UpdateRule:
    """The update rule ``cfg`` names."""
    return OPTIMIZERS.get(cfg.name)(cfg)


class SGD(RuleOptimizer):
    """``torch.optim.SGD``'s update (no dampening, no Nesterov), without its step wrapper.

    Every ``torch.optim.Optimizer.step`` runs through hooks and a profiler scope that
    cost more than the update of a small model (~45 of ~60 µs per step for a 1.7k-weight
    MLP). The arithmetic is torch's single-tensor SGD, operation for operation, so
    results are bit-identical (a test compares the two).
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, SGDRule(lr, momentum, weight_decay))
        self.momentum = momentum

    @property
    def momentum_buffers(self) -> list[torch.Tensor | None]:
        """Each parameter's momentum buffer (None before its first step)."""
        return [state[0] for state in self.states]

    @momentum_buffers.setter
    def momentum_buffers(self, buffers: list[torch.Tensor | None]) -> None:
        for state, buf in zip(self.states, buffers, strict=True):
            state[0] = buf


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig) -> LocalOptimizer:
    """Build the optimizer ``cfg`` names."""
    rule = update_rule(cfg)
    if isinstance(rule, SGDRule):  # the form whose momentum LASGD keeps between blocks
        return SGD(params, rule.lr, rule.momentum, rule.weight_decay)
    return RuleOptimizer(params, rule)
