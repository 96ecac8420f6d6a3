"""Local steps: what an algorithm changes in the one training loop.

A strategy asks for a step by sending ``local-step`` in the train config, or by
sending the config key a step is triggered by (Flower's FedProx sends
``proximal-mu``, which selects the proximal step). Each step supplies the per-example
data loss and an optional penalty on the parameters; the loop in
:mod:`fedsim.clients.training` does everything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import RecordDict
from torch import nn

from fedsim import wire
from fedsim.data.node_data import NodeData
from fedsim.errors import UnknownNameError
from fedsim.registry import Registry
from fedsim.scenario import ClientConfig

if TYPE_CHECKING:  # training.py imports this module
    from fedsim.clients.training import TrainResult


@dataclass(frozen=True)
class StepInputs:
    """What a step may read when a train message arrives.

    Attributes
    ----------
    config : mapping
        The train message's config record.
    global_model : nn.Module
        The model as received (a copy; steps may anchor to it).
    extras : mapping of str to ndarray
        Arrays the server sent besides the model (e.g. FedCurv's sums).
    state : RecordDict
        The node's persistent ``context.state``.
    batch_size : int
        The client's ``client.batch_size``.
    data : NodeData, optional
        The node's own examples (what it trains on; with AGC's sharing plan also how
        many clients hold each). Steps never see the whole scenario.
    partition_id : int
        The node's ``partition-id``.
    node_id : int
        The node's Flower node id (what the server sees as the reply's source).

    The model is the one about to be trained: read it in ``__init__`` (copy what must
    stay fixed, as the proximal step does with its anchor).
    """

    config: Mapping[str, Any]
    global_model: nn.Module
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    state: RecordDict = field(default_factory=RecordDict)
    batch_size: int = 32
    data: NodeData | None = None
    partition_id: int = 0
    node_id: int = 0


class LocalStep:
    """Plain empirical risk minimisation with cross-entropy."""

    trigger_key: ClassVar[str | None] = None
    # Model arrays the server does not send in full and the reply must not carry
    # (the step fills them from its extras and returns what it may in ``finish``).
    withheld: ClassVar[frozenset[str]] = frozenset()
    # False for steps whose reply is computed at the received model (AGC's coded
    # gradient): the reply then carries only ``finish``'s arrays, not the model.
    trains_model: ClassVar[bool] = True
    # Under ``client.dp`` every release must come out of the shared loop's private
    # gradient. A step that releases anything else (statistics of the data, an
    # unclipped gradient) says what here, and is refused with DP before training.
    dp_refusal: ClassVar[str | None] = None
    # Whether ``engine.batch_clients`` may train this step's clients together
    # (:mod:`fedsim.clients.batched`): the step does its work only through
    # ``data_loss`` and ``penalty``, both depend only on the train config and the
    # received model (not on the node's data, state or identity), ``run`` and ``finish``
    # do nothing and nothing is withheld. True for the plain step (this class) and only
    # for subclasses that say so in their own body: a subclass inherits False, so a new
    # or custom step is never batched by accident.
    vectorisable: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "vectorisable" not in cls.__dict__:
            cls.vectorisable = False

    def __init__(self, inputs: StepInputs) -> None:
        self.config = inputs.config

    def run(
        self, model: nn.Module, cfg: ClientConfig, generator: torch.Generator
    ) -> TrainResult | None:
        """Do the local work instead of the shared training loop (None: run the loop)."""
        return None

    def data_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return the per-example losses, shape (B,).

        For sequence targets (B, T) an example's loss is its mean token loss: a whole
        sequence is one example (DP-SGD's privacy unit) and the scale matches the
        per-token loss the server reports.
        """
        loss = F.cross_entropy(logits, targets, reduction="none")
        return loss.flatten(1).mean(1) if loss.dim() > 1 else loss

    def penalty(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Return a scalar added to the mean batch loss, or None.

        ``params`` are the trained model's named parameters (``named_parameters()``).
        The penalty must be a pure function of them (no reads of the model object), so
        the same step runs where the parameters are functional tensors (``torch.func``).
        """
        return None

    def finish(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
        """After training: extra arrays for the reply (and any state to keep)."""
        return {}


class ProximalStep(LocalStep):
    """FedProx: add (mu/2)·||w - w_global||² (Li et al. 2020)."""

    trigger_key = wire.PROXIMAL_MU
    vectorisable = True  # the penalty reads only mu and the received model

    def __init__(self, inputs: StepInputs) -> None:
        super().__init__(inputs)
        self.mu = float(inputs.config[wire.PROXIMAL_MU])
        self.anchor = {n: p.detach().clone() for n, p in inputs.global_model.named_parameters()}

    def penalty(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Return the proximal term (None when mu is 0)."""
        if self.mu == 0.0:
            return None
        sq = sum(((params[n] - a) ** 2).sum() for n, a in self.anchor.items())
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
