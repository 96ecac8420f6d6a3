"""Per-example gradient kernels keyed by layer type.

A kernel turns what one backward pass captured for a module (its inputs ``A`` and the
gradients ``Δ`` of the summed per-example losses with respect to its outputs) into

* the squared norms of each example's gradient over the module's parameters, and
* the clipped sum ``Σ_i c_i g_i`` written into each parameter's ``.grad``,

without materialising per-example gradients unless that is the cheaper route. Register
one with :func:`register_kernel`, as Opacus registers grad samplers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn


class UnsupportedModuleError(TypeError):
    """A module's per-example gradients cannot be computed (names the module path)."""


@dataclass
class Record:
    """What one forward/backward captured for one module.

    Attributes
    ----------
    inputs : list of tuple of Tensor
        The positional inputs of every call of the module in the forward pass.
    grads : list of Tensor
        The gradient of the summed loss with respect to each call's output.
    cache : dict
        Scratch space a kernel fills in ``norm_sq`` and reuses in ``accumulate``.
    """

    inputs: list[tuple[Any, ...]] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict)


class Kernel:
    """Per-example norms and clipped sums for one layer type.

    ``captures_itself`` kernels belong to modules that record their own activations and
    backprops (custom autograd functions, e.g. :class:`fedsim.kernels.LSTM`); the
    others get inputs and output gradients from hooks, and their parameters are frozen
    during the pass so autograd computes no (unclipped) weight gradients at all.
    """

    captures_itself: ClassVar[bool] = False

    def supports(self, module: nn.Module) -> bool:
        """Whether this kernel handles this instance (else the ``torch.func`` fallback)."""
        return True

    def norm_sq(self, module: nn.Module, record: Record) -> torch.Tensor:
        """Return ``Σ_params ‖g_i‖²`` for every example, shape (B,)."""
        raise NotImplementedError

    def accumulate(self, module: nn.Module, record: Record, coef: torch.Tensor) -> None:
        """Set each parameter's ``.grad`` to ``Σ_i coef_i g_i``."""
        raise NotImplementedError


KERNELS: dict[type[nn.Module], Kernel] = {}
M = TypeVar("M", bound=type[Kernel])

# Layers whose per-example gradients depend on the rest of the batch.
UNSUPPORTED: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm,)


def register_kernel(*layer_types: type[nn.Module]) -> Callable[[M], M]:
    """Register a kernel class for exact layer types (subclasses are not matched)."""

    def decorator(cls: M) -> M:
        for layer_type in layer_types:
            KERNELS[layer_type] = cls()
        return cls

    return decorator


def set_grad(param: torch.Tensor | nn.Module, value: torch.Tensor) -> None:
    """Store a clipped sum as the parameter's gradient (replacing any old one)."""
    assert isinstance(param, torch.Tensor)  # nn.Module attribute access is loosely typed
    param.grad = value.reshape(param.shape).to(param.dtype)
