"""Many clients' local steps as one step over a client axis (``engine.batch_clients``).

Every client of a stacked chunk gets its own :class:`~fedsim.client.steps.LocalStep`,
built from its own :class:`~fedsim.client.steps.StepInputs` exactly as the ClientApp
builds it. A ``vectorisable`` step keeps what its ``data_loss``, ``penalty`` and
``correction`` read in tensors: its attributes, in dicts, lists and tuples of them, and
in its loss (the dataclass losses of :mod:`fedsim.client.losses`). :class:`StackedStep`
stacks those tensors along a leading client axis (a tensor every client holds as the
same object is passed once, unstacked) and, inside ``torch.func.vmap``, puts each
client's slice back into a shallow copy of the first client's step. So the hooks run
unchanged on each client's own tensors: SCAFFOLD's ``c - c_i``, FedCurv's sums less the
client's own terms, a logit-adjusted loss's label prior.

What is not a tensor is taken from the first client's step: a vectorisable step's
hooks may read such attributes only if they are the same for every client that
received the same message (its config, its rate), never the node's state object.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from fedsim.client.steps import LocalStep

Path = tuple[Any, ...]  # attribute names, dict keys and sequence indices from the step


class UnstackableSteps(ValueError):
    """The clients' steps hold tensors of different structure or shape."""


# Values that hold no tensor: a step's config is mostly these (checked first, by type).
_LEAVES = frozenset({int, float, str, bool, bytes, type(None)})


def _slots(obj: Any, path: Path, out: list[tuple[Path, torch.Tensor]], depth: int) -> None:
    """Append every tensor under ``obj`` with the path that reaches it."""
    if type(obj) in _LEAVES:
        return
    if isinstance(obj, torch.Tensor):
        out.append((path, obj))
    elif depth > 6:  # deep structures are no step's hook state
        return
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _slots(value, (*path, key), out, depth + 1)
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            _slots(value, (*path, i), out, depth + 1)
    elif isinstance(obj, LocalStep) or (
        dataclasses.is_dataclass(obj) and not isinstance(obj, type)
    ):
        for key, value in vars(obj).items():
            _slots(value, (*path, key), out, depth + 1)


def tensor_slots(step: LocalStep) -> list[tuple[Path, torch.Tensor]]:
    """The tensors ``step`` holds, each with its path (in attribute order)."""
    out: list[tuple[Path, torch.Tensor]] = []
    _slots(step, (), out, 0)
    return out


def _put(obj: Any, path: Path, value: torch.Tensor) -> Any:
    """A copy of ``obj`` with the tensor at ``path`` replaced (containers copied on the way)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        new = dict(obj)
        new[head] = _put(obj[head], rest, value)
        return new
    if isinstance(obj, list | tuple):
        items = list(obj)
        items[head] = _put(obj[head], rest, value)
        return type(obj)(items) if isinstance(obj, list) else tuple(items)
    new = copy.copy(obj)  # a step or a dataclass loss (frozen ones too)
    object.__setattr__(new, head, _put(getattr(obj, head), rest, value))
    return new


class StackedStep:
    """The chunk's steps as one: the stacked tensors and each client's view of them."""

    def __init__(self, steps: Sequence[LocalStep]) -> None:
        first = steps[0]
        slots = [tensor_slots(s) for s in steps]
        paths = [p for p, _ in slots[0]]
        for other in slots[1:]:
            if [p for p, _ in other] != paths:
                raise UnstackableSteps("the clients' steps hold different tensors")
        self.first, self.paths = first, paths
        self.stacked: list[torch.Tensor] = []
        self.dims: list[int | None] = []  # vmap's in_dims: 0 stacked, None shared
        for i in range(len(paths)):
            values = [s[i][1] for s in slots]
            if all(v is values[0] for v in values):
                self.stacked.append(values[0])
                self.dims.append(None)
            else:
                if any(v.shape != values[0].shape for v in values):
                    raise UnstackableSteps(f"the clients' {paths[i]} differ in shape")
                self.stacked.append(torch.stack(values))
                self.dims.append(0)
        cls = type(first)
        self.has_correction = cls.correction is not LocalStep.correction
        self.has_custom_reply = (
            cls.reply is not LocalStep.reply or cls.model_arrays is not LocalStep.model_arrays
        )

    def rows(self, active: int) -> list[torch.Tensor]:
        """The stacked tensors of the first ``active`` clients (shared ones whole)."""
        pairs = zip(self.stacked, self.dims, strict=True)
        return [t if d is None else t[:active] for t, d in pairs]

    def view(self, values: Sequence[torch.Tensor]) -> LocalStep:
        """The first client's step holding ``values`` (one client's slices, inside vmap)."""
        step: Any = self.first
        for path, value in zip(self.paths, values, strict=True):
            step = _put(step, path, value)
        return step  # type: ignore[no-any-return]

    def correction(
        self, params: Mapping[str, torch.Tensor], active: int
    ) -> Mapping[str, torch.Tensor] | None:
        """Each active client's gradient correction, stacked (None if the step has none)."""
        if not self.has_correction:
            return None

        def one(values: list[torch.Tensor], p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            out = self.view(values).correction(p)
            return {} if out is None else dict(out)

        fn: Callable[..., dict[str, torch.Tensor]] = torch.func.vmap(
            one, in_dims=(list(self.dims), 0)
        )
        return fn(self.rows(active), dict(params))
