"""Local steps: what an algorithm changes in the one training loop.

A strategy asks for a step by sending ``local-step`` in the train config, or by
sending the config key a step is triggered by (Flower's FedProx sends
``proximal-mu``, which selects the proximal step). Each step supplies the per-example
data loss and an optional penalty on the parameters; the loop in
:mod:`fedsim.clients.training` does everything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedsim import wire
from fedsim.errors import UnknownNameError
from fedsim.registry import Registry


class LocalStep:
    """Plain empirical risk minimisation with cross-entropy.

    Parameters
    ----------
    config : mapping
        The train message's config record.
    global_model : nn.Module
        The model as received from the server (not trained; steps may anchor to it).
    """

    trigger_key: ClassVar[str | None] = None

    def __init__(self, config: Mapping[str, Any], global_model: nn.Module) -> None:
        self.config = config

    def data_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return the per-example losses, shape (B,).

        For sequence targets (B, T) an example's loss is its mean token loss: a whole
        sequence is one example (DP-SGD's privacy unit) and the scale matches the
        per-token loss the server reports.
        """
        loss = F.cross_entropy(logits, targets, reduction="none")
        return loss.flatten(1).mean(1) if loss.dim() > 1 else loss

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """Return a scalar added to the mean batch loss, or None."""
        return None


class ProximalStep(LocalStep):
    """FedProx: add (mu/2)·||w - w_global||² (Li et al. 2020)."""

    trigger_key = wire.PROXIMAL_MU

    def __init__(self, config: Mapping[str, Any], global_model: nn.Module) -> None:
        super().__init__(config, global_model)
        self.mu = float(config[wire.PROXIMAL_MU])
        self.anchor = [p.detach().clone() for p in global_model.parameters()]

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """Return the proximal term (None when mu is 0)."""
        if self.mu == 0.0:
            return None
        sq = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), self.anchor, strict=True))
        return 0.5 * self.mu * sq  # type: ignore[return-value]


STEPS: Registry[type[LocalStep]] = Registry("local steps")
STEPS.add("plain", LocalStep)
STEPS.add("proximal", ProximalStep)


def select_step(config: Mapping[str, Any]) -> type[LocalStep]:
    """Return the step a train config asks for.

    An explicit ``local-step`` wins; otherwise the step whose trigger key is present;
    otherwise the plain step.
    """
    if wire.LOCAL_STEP in config:
        name = str(config[wire.LOCAL_STEP])
        try:
            return STEPS.get(name)
        except UnknownNameError as exc:
            raise ValueError(f"server asked for an unknown local step: {exc}") from None
    for name in STEPS.names():
        step = STEPS.get(name)
        if step.trigger_key is not None and step.trigger_key in config:
            return step
    return LocalStep
