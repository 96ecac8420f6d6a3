"""Typed ``strategy.params``: each algorithm's parameters, checked in one place.

An algorithm's spec names a :class:`StrategyParams` subclass: its fields are the
strategy's keyword parameters with their types, bounds and docstrings. Composition
(``fedsim validate`` and ``fedsim run`` alike) checks a scenario's params against it
before anything is built, and the strategy's constructor checks what Python hands it
with the same model (:meth:`StrategyParams.checked`), so a bound is written once.

Types are strict (YAML's ``1`` is a fine float; ``"1"``, ``true`` or ``1.5`` for an
integer are not); keys a model does not name are left to the constructor-signature
check (an unknown key is reported once, by name). :func:`param_problems` words each
failure as one line with the valid range: ``must be a number >= 0, got -1``.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Self

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

__all__ = ["FedAvgParams", "StrategyParams", "expectation", "one_of", "param_problems"]

_TYPE_WORDS: dict[Any, str] = {
    float: "a number",
    int: "an integer",
    bool: "true or false",
    str: "a string",
}
_PLURALS: dict[Any, str] = {float: "numbers", int: "integers", str: "strings"}


class StrategyParams(BaseModel):
    """Base of every algorithm's parameters model (strict types, unknown keys left alone)."""

    model_config = ConfigDict(
        strict=True, extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    @classmethod
    def checked(cls, **values: Any) -> Self:
        """Validate parameters handed over in Python (a strategy constructor's own).

        Raises
        ------
        ValueError
            ``<name> must be ..., got ...`` for the first value that does not fit.
        """
        problems = param_problems(cls, values)
        if problems:
            name, text = problems[0]
            raise ValueError(f"{name} {text}")
        return cls.model_validate(values)


class FedAvgParams(StrategyParams):
    """Flower's FedAvg parameters: every shipped strategy built on FedAvg takes them.

    The defaults are Flower's; fedsim's builder sets ``fraction_evaluate: 0`` and
    ``min_available_nodes: data.num_clients`` when a scenario leaves them unset.
    """

    fraction_train: float = Field(1.0, gt=0, le=1)
    """Share of the connected nodes sampled to train each round (0 would train none)."""
    fraction_evaluate: float = Field(1.0, ge=0, le=1)
    """Share sampled for federated evaluation on the clients' own data (0: central only)."""
    min_train_nodes: int = Field(2, ge=0)
    """Fewest nodes a training round samples."""
    min_evaluate_nodes: int = Field(2, ge=0)
    """Fewest nodes a federated evaluation round samples."""
    min_available_nodes: int = Field(2, ge=0)
    """Nodes that must be connected before a round starts."""
    weighted_by_key: str = "num-examples"
    """Reply metric that weights each client's update."""
    arrayrecord_key: str = "arrays"
    """Record key of the model arrays in messages."""
    configrecord_key: str = "config"
    """Record key of the config in messages."""


def one_of(value: str, names: Sequence[str]) -> str:
    """``value`` if it is one of ``names`` (a registry's); else ValueError listing them."""
    if value not in names:
        raise ValueError(f"must be one of {', '.join(map(repr, names))}, got {value!r}")
    return value


def param_problems(model: type[BaseModel], params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(dotted name, one-line text)`` for each value of ``params`` that ``model`` refuses."""
    try:
        model.model_validate(dict(params))
    except ValidationError as exc:
        found = []
        for error in exc.errors():
            if error["type"] == "extra_forbidden" or not error["loc"]:
                continue
            name = ".".join(str(part) for part in error["loc"])
            field = model.model_fields.get(str(error["loc"][0]))
            if error["type"] == "value_error" or field is None:  # a validator's own words
                text = str(error["msg"]).removeprefix("Value error, ")
            else:
                value = error.get("input")
                text = f"must be {expectation(field)}, got {value!r}"
            found.append((name, text))
        return found
    return []


def expectation(field: FieldInfo) -> str:
    """What a field takes, in words: ``a number in [0, 1)``, ``one of 'I', 'II'``."""
    annotation = field.annotation
    args = typing.get_args(annotation)
    nullable = (
        typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args
    )
    if nullable:
        rest = [a for a in args if a is not type(None)]
        annotation = rest[0] if len(rest) == 1 else annotation
    if typing.get_origin(annotation) is Literal:
        words = "one of " + ", ".join(repr(c) for c in typing.get_args(annotation))
    elif typing.get_origin(annotation) in (list, tuple, Sequence):
        words = f"a list of {_PLURALS.get(typing.get_args(annotation)[0], 'values')}"
    else:
        words = _TYPE_WORDS.get(annotation, getattr(annotation, "__name__", str(annotation)))
    words += _bounds(field)
    return f"{words} or null" if nullable else words


def _bounds(field: FieldInfo) -> str:
    low = high = ""
    for item in field.metadata:
        if isinstance(item, Ge):
            low = f"[{item.ge:g}"
        elif isinstance(item, Gt):
            low = f"({item.gt:g}"
        elif isinstance(item, Le):
            high = f"{item.le:g}]"
        elif isinstance(item, Lt):
            high = f"{item.lt:g})"
    if low and high:
        return f" in {low}, {high}"
    if low:
        return f" {'>=' if low[0] == '[' else '>'} {low[1:]}"
    if high:
        return f" {'<=' if high[-1] == ']' else '<'} {high[:-1]}"
    return ""
