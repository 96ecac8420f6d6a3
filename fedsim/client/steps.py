"""Local steps: what an algorithm changes in the one training loop (public API).

A strategy asks for a step by sending ``local-step`` in the train config, or by
sending the config key a step is triggered by (Flower's FedProx sends
``proximal-mu``, which selects the proximal step). A step is one class, registered with
:func:`register_step` (``fedsim.register_step``), that may override:

``data_loss(logits, targets)``
    The per-example data loss, shape ``(B,)`` (default: ``client.loss``, the
    cross-entropy unless the scenario names another, as ``inputs.loss``).
``penalty(params)``
    A scalar added to the mean batch loss, a pure function of the named parameters.
``correction(params)``
    Arrays added to each named parameter's data gradient at every step (SCAFFOLD's
    ``c - c_i``), a pure function of the parameters too. Under DP-SGD both are added
    outside the privatised gradient: they must not read the node's data.
``reply(model, data, work)``
    The arrays the reply carries (default: the trained model's arrays, less
    :attr:`LocalStep.fills`) and what the job did.

and the class attributes :attr:`~LocalStep.reads` (config keys the step reads; a key
the server sends that neither the step nor the ClientApp reads is a warning),
:attr:`~LocalStep.fills`, :attr:`~LocalStep.trains`, :attr:`~LocalStep.dp_refusal` and
:attr:`~LocalStep.trigger_key`.

What arrives
    The received arrays that are the model's own (its ``state_dict`` keys) are loaded
    into the model before the step is built; every other received array reaches the
    step as ``inputs.extras`` (FedCurv's sums, SCAFFOLD's server control variate). A
    model array the server does not send is an error unless the step names it in
    ``fills`` and fills it in ``__init__``.
What the reply may carry
    Model arrays (all those the server sent, in the model's shapes) and arrays under
    the keys of arrays the server sent, in the shapes it sent them; the engine refuses
    any other array (see :mod:`fedsim.engine.reply_check`).
What persists
    ``inputs.state`` is the node's ``context.state``: records a step stores there (under
    its own key prefix) are there the next time the node trains, in every engine and on
    a deployed SuperNode, and in-process checkpoints keep them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from flwr.app import RecordDict
from torch import nn

from fedsim import wire
from fedsim.client.losses import LossFn, cross_entropy
from fedsim.data.node_data import NodeData
from fedsim.errors import UnknownNameError
from fedsim.registry import Registry

ArrayLike = np.ndarray | torch.Tensor


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
    lr : float
        The local optimizer's learning rate (``client.optimizer.lr``).
    local_steps : int
        The optimizer steps the shared loop will take.
    loss : callable
        The per-example data loss ``client.loss`` names (:mod:`fedsim.client.losses`).

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
    lr: float = 0.05
    local_steps: int = 1
    loss: LossFn = cross_entropy


@dataclass(frozen=True)
class TrainResult:
    """What one local job did.

    Attributes
    ----------
    mean_loss : float
        Mean training loss over every example processed.
    samples : int
        Examples processed (an example seen in two epochs counts twice).
    steps : int
        Optimizer steps taken.
    num_examples : float, optional
        Examples the reply stands for (``num-examples``); None: the local dataset size.
    """

    mean_loss: float
    samples: int
    steps: int
    num_examples: float | None = None


@dataclass(frozen=True)
class Reply:
    """What a train reply carries.

    Attributes
    ----------
    arrays : mapping of str to array
        Every array of the reply (model arrays and the step's own).
    work : TrainResult
        What the job did: the shared loop's result, or the step's own work when it
        does not train (its loss, examples, and the examples the reply stands for).
    metrics : mapping of str to float
        The step's own reply metrics beside the ClientApp's (finite numbers; e.g. the
        code position of a moment-encoded reply).
    """

    arrays: Mapping[str, ArrayLike]
    work: TrainResult
    metrics: Mapping[str, float] = field(default_factory=dict)


class LocalStep:
    """Base of every local step: plain empirical risk minimisation with ``client.loss``."""

    # A config key whose presence selects this step (without an explicit local-step).
    trigger_key: ClassVar[str | None] = None
    # Config keys this step reads (its trigger key among them); others are warned of.
    reads: ClassVar[frozenset[str]] = frozenset()
    # Model arrays the server withholds: the step fills them in __init__ (from its
    # extras) and the default reply leaves them out.
    fills: ClassVar[frozenset[str]] = frozenset()
    # False: the shared loop does not run; ``reply`` works at the received model
    # (AGC's coded gradient) and says what it did.
    trains: ClassVar[bool] = True
    # Under ``client.dp`` every release must come out of the shared loop's private
    # gradient. A step that releases anything else (statistics of the data, an
    # unclipped gradient) says what here, and is refused with DP before training.
    dp_refusal: ClassVar[str | None] = None
    # Whether a batched trainer may run this step for many clients at once (only the
    # hooks data_loss and penalty as pure functions of the parameters).
    vectorisable: ClassVar[bool] = False
    # The per-example data loss (``inputs.loss``); the class default also serves steps
    # whose ``__init__`` does not call the base one.
    loss: LossFn = staticmethod(cross_entropy)

    def __init__(self, inputs: StepInputs) -> None:
        self.config = inputs.config
        self.loss = inputs.loss

    def data_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return the per-example losses, shape (B,).

        For sequence targets (B, T) an example's loss is its mean token loss: a whole
        sequence is one example (DP-SGD's privacy unit) and the scale matches the
        per-token loss the server reports. The loss is ``client.loss`` (cross-entropy
        by default).
        """
        return self.loss(logits, targets)

    def penalty(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Return a scalar added to the mean batch loss, or None.

        ``params`` are the trained model's named parameters (``named_parameters()``).
        The penalty must be a pure function of them (no reads of the model object), so
        the same step runs where the parameters are functional tensors (``torch.func``).
        """
        return None

    def correction(self, params: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor] | None:
        """Return tensors added to the named parameters' gradients each step, or None.

        Keys are parameter names (a subset of ``params``), values have their shapes;
        the loop adds them after the data loss's and the penalty's gradients, before
        the optimizer step. A pure function of ``params``, like :meth:`penalty`.
        """
        return None

    def model_arrays(self, model: nn.Module) -> dict[str, ArrayLike]:
        """The model's arrays (its ``state_dict``) less those the step fills."""
        return {k: v for k, v in model.state_dict().items() if k not in self.fills}

    def reply(self, model: nn.Module, data: NodeData, work: TrainResult | None) -> Reply:
        """Return the reply's arrays and what the job did.

        ``work`` is the shared loop's result (None when :attr:`trains` is False: the
        step then does its own work here, at the received model). By default the reply
        is the trained model.
        """
        if work is None:
            raise NotImplementedError(f"{type(self).__name__} does not train: override reply")
        return Reply(self.model_arrays(model), work)


class ProximalStep(LocalStep):
    """FedProx: add (mu/2)·||w - w_global||² (Li et al. 2020)."""

    trigger_key = wire.PROXIMAL_MU
    reads = frozenset({wire.PROXIMAL_MU})
    vectorisable = True

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


class PlainStep(LocalStep):
    """Plain empirical risk minimisation (the data loss alone)."""

    vectorisable = True


STEPS: Registry[type[LocalStep]] = Registry("local steps")
STEPS.add("plain", PlainStep)
STEPS.add("proximal", ProximalStep)

Step = TypeVar("Step", bound=type[LocalStep])


def register_step(name: str, *, help: str = "") -> Callable[[Step], Step]:
    """Register a :class:`LocalStep` subclass under ``name`` (``fedsim.register_step``).

    A strategy selects it by sending ``local-step: name`` in its train config, or by
    sending the step's ``trigger_key``. The module that registers it must be imported
    in every process that runs clients (a scenario's ``plugins`` does that).

    Examples
    --------
    >>> @register_step("doc-example-step")
    ... class Doubled(LocalStep):
    ...     def data_loss(self, logits, targets):
    ...         return 2 * super().data_loss(logits, targets)
    """

    def decorator(cls: Step) -> Step:
        if not (isinstance(cls, type) and issubclass(cls, LocalStep)):
            raise TypeError(f"register_step: {cls!r} is not a LocalStep subclass")
        STEPS.add(name, cls, help=help)
        return cls

    return decorator


def select_step(config: Mapping[str, Any]) -> type[LocalStep]:
    """Return the step a train config asks for.

    An explicit ``local-step`` wins; otherwise the step whose trigger key is present;
    otherwise the plain step.

    Raises
    ------
    ValueError
        If ``local-step`` names no registered step.
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
    return PlainStep
