"""Component parameters checked against their annotations before anything is built.

A strategy or model factory says what its parameters are (``fraction_train: float``,
``hidden: list[int]``); a scenario giving ``fraction_train: not-a-number`` should fail
validation naming ``strategy.params.fraction_train``, not the first round. Each given
value is validated against its parameter's annotation (pydantic, lax mode: YAML's
``1`` is a fine float); annotations pydantic cannot check are left alone.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from fedsim.errors import Problem


def annotations_of(factory: Callable[..., Any]) -> dict[str, Any]:
    """Parameter annotations of ``factory`` (a class: its ``__init__`` up the MRO)."""
    targets = (
        [vars(c)["__init__"] for c in reversed(factory.__mro__) if "__init__" in vars(c)]
        if inspect.isclass(factory)
        else [factory]
    )
    found: dict[str, Any] = {}
    for target in targets:  # base first: a subclass's annotation wins
        try:
            hints = typing.get_type_hints(target)
        except Exception:  # an annotation that does not resolve says nothing checkable
            continue
        found.update((k, v) for k, v in hints.items() if k != "return")
    return found


def param_type_problems(
    factory: Callable[..., Any], params: Mapping[str, Any], key: str
) -> list[Problem]:
    """One problem per value of ``params`` that does not fit its annotation."""
    hints = annotations_of(factory)
    problems = []
    for name, value in params.items():
        if name not in hints:
            continue
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(hints[name])
        except Exception:  # a type pydantic has no schema for (an ArrayRecord, a Grid)
            continue
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            first = exc.errors()[0]["msg"] if exc.errors() else str(exc)
            problems.append(Problem(f"{key}.{name}", f"{first} (got {value!r})"))
    return problems
