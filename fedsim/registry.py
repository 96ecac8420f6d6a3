"""Name-keyed registries for everything a scenario may name.

Every pluggable kind (strategies, models, datasets, partitioners, speed distributions,
local steps) is a :class:`Registry`. Lookups of unknown names raise
:class:`~fedsim.errors.UnknownNameError` listing the valid names with a close-match
suggestion, so no code dispatches on strings with if/elif.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from fedsim.errors import ImportKindError, UnknownNameError

T = TypeVar("T")

# `pkg.module:attr.sub`: dotted identifiers on both sides of one colon. Only names of
# this form are ever imported, so what `fedsim validate` lists is all a file can import.
_IDENT = r"[^\W\d]\w*"
IMPORT_PATH = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*")


def suggest(name: str, choices: list[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def choices_text(name: str, choices: list[str]) -> str:
    """Format the standard ``unknown ... ; valid: ...`` tail of an error."""
    return f"'{name}' is not one of: {', '.join(sorted(choices))}{suggest(name, choices)}"


def is_import_path(name: str) -> bool:
    """Whether a registry that allows imports would import ``name`` (it holds a colon)."""
    return ":" in name


def import_object(spec: str) -> object:
    """Import ``pkg.module:attr`` (the syntax for user-supplied components).

    Importing runs the module's top-level code; the attribute itself is not called.

    Raises
    ------
    UnknownNameError
        If ``spec`` is not of that form or the module or attribute cannot be imported.
    """
    if not IMPORT_PATH.fullmatch(spec):
        raise UnknownNameError(f"'{spec}' is not of the form 'pkg.module:name'")
    module_name, _, attr = spec.partition(":")
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


def describe_object(obj: object) -> str:
    """What ``obj`` is, in a few words (``a built-in function``, ``class Popen``)."""
    if inspect.isclass(obj):
        return f"class {obj.__qualname__}"
    if inspect.ismodule(obj):
        return "a module"
    if inspect.isbuiltin(obj):
        return "a built-in function"
    if inspect.isfunction(obj):
        return f"function {obj.__qualname__}"
    return f"a {type(obj).__name__} object"


@dataclass(frozen=True)
class ImportKind:
    """What an imported ``pkg.module:attr`` must be before a registry hands it out.

    Parameters
    ----------
    what : str
        The expected kind, for messages (``"a flwr Strategy subclass"``).
    accepts : callable
        True for an object of that kind; it must not call the object.
    """

    what: str
    accepts: Callable[[object], bool]

    def check(self, spec: str, obj: object) -> None:
        """Raise :class:`ImportKindError` unless ``obj`` (imported from ``spec``) fits."""
        if not self.accepts(obj):
            raise ImportKindError(f"'{spec}' is {describe_object(obj)}, not {self.what}")


class Registry(Generic[T]):
    """A mapping from names to components with helpful errors.

    Parameters
    ----------
    kind : str
        What the registry holds, in the plural (``"strategies"``); used in messages.
    importable : ImportKind, optional
        If given, names of the form ``pkg.module:attr`` are imported on lookup, and the
        object must be of this kind (checked before anything calls it).
    loader : callable, optional
        Called once, before the first lookup, to import the modules that register the
        shipped components (so importing one of them never imports all the others).
    """

    def __init__(
        self,
        kind: str,
        *,
        importable: ImportKind | None = None,
        loader: Callable[[], None] | None = None,
    ) -> None:
        self.kind = kind
        self.importable = importable
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}
        self._loader = loader

    def _load(self) -> None:
        if self._loader is not None:
            loader, self._loader = self._loader, None
            loader()

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
        self._load()
        if name in self._items:
            return self._items[name]
        if self.importable is not None and is_import_path(name):
            obj = import_object(name)
            self.importable.check(name, obj)
            return obj  # type: ignore[return-value]
        raise UnknownNameError(choices_text(name, self.names()))

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(sorted(self._items))

    def __len__(self) -> int:
        self._load()
        return len(self._items)

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        self._load()
        return sorted(self._items)

    def describe(self) -> list[tuple[str, str]]:
        """Return ``(name, one-line help)`` pairs for ``fedsim list``."""
        return [(n, self._help[n]) for n in self.names()]
