"""Name-keyed registries for everything a scenario may name.

Every pluggable kind (strategies, models, datasets, partitioners, speed distributions,
local steps) is a :class:`Registry`. Lookups of unknown names raise
:class:`~fedsim.errors.UnknownNameError` listing the valid names with a close-match
suggestion, so no code dispatches on strings with if/elif.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fedsim.errors import UnknownNameError

T = TypeVar("T")


def suggest(name: str, choices: list[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def choices_text(name: str, choices: list[str]) -> str:
    """Format the standard ``unknown ... ; valid: ...`` tail of an error."""
    return f"'{name}' is not one of: {', '.join(sorted(choices))}{suggest(name, choices)}"


def import_object(spec: str) -> object:
    """Import ``pkg.module:attr`` (the syntax for user-supplied components).

    Raises
    ------
    UnknownNameError
        If the module or attribute cannot be imported.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UnknownNameError(f"'{spec}' is not of the form 'pkg.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownNameError(f"cannot import module '{module_name}': {exc}") from None
    try:
        obj: object = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise UnknownNameError(f"module '{module_name}' has no attribute '{attr}'") from None
    return obj


class Registry(Generic[T]):
    """A mapping from names to components with helpful errors.

    Parameters
    ----------
    kind : str
        What the registry holds, in the plural (``"strategies"``); used in messages.
    allow_import : bool
        Whether names of the form ``pkg.module:attr`` are imported on lookup.
    """

    def __init__(self, kind: str, *, allow_import: bool = False) -> None:
        self.kind = kind
        self.allow_import = allow_import
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, *, help: str = "") -> Callable[[T], T]:
        """Return a decorator that registers its argument under ``name``."""

        def decorator(obj: T) -> T:
            self.add(name, obj, help=help)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, help: str = "") -> None:
        """Register ``obj`` under ``name``; re-registering the same object is a no-op."""
        existing = self._items.get(name)
        if existing is not None and existing is not obj:
            raise ValueError(f"{self.kind}: '{name}' is already registered")
        self._items[name] = obj
        doc = help or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
        self._help[name] = doc

    def get(self, name: str) -> T:
        """Return the component called ``name`` (or imported from ``pkg.module:attr``)."""
        if name in self._items:
            return self._items[name]
        if self.allow_import and ":" in name:
            return import_object(name)  # type: ignore[return-value]
        raise UnknownNameError(choices_text(name, self.names()))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        return sorted(self._items)

    def describe(self) -> list[tuple[str, str]]:
        """Return ``(name, one-line help)`` pairs for ``fedsim list``."""
        return [(n, self._help[n]) for n in self.names()]
