"""Local optimizers by registry name (the ``client.optimizer.name`` key)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from fedsim.registry import Registry
from fedsim.scenario import OptimizerConfig

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter], OptimizerConfig], torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizers")


@OPTIMIZERS.register("sgd", help="SGD with optional momentum and weight decay")
def sgd(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Plain (momentum) SGD."""
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adam", help="Adam (momentum is ignored)")
def adam(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Adam with the configured learning rate and weight decay."""
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig
) -> torch.optim.Optimizer:
    """Build the optimizer ``cfg`` names."""
    return OPTIMIZERS.get(cfg.name)(params, cfg)
