"""Model registry shared by the server (initial weights, central evaluation) and clients.

A model factory is called as ``factory(input_shape, num_classes, **params)`` and returns
an ``nn.Module`` mapping a batch of shape ``(B, *input_shape)`` to ``(B, num_classes)``
logits. Users add models with :func:`register_model` or name ``pkg.module:factory``.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from torch import nn

from fedsim.errors import Problem, ScenarioError, UnknownNameError
from fedsim.registry import ImportKind, Registry

ModelFactory = Callable[..., nn.Module]


def is_model_factory(obj: object) -> bool:
    """Whether ``obj`` is an ``nn.Module`` subclass or a function annotated to return one.

    Judged from the class or the return annotation alone: nothing is called, so a
    scenario naming ``builtins:exec`` or ``subprocess:run`` is refused before it runs.
    """
    if inspect.isclass(obj):
        return issubclass(obj, nn.Module)
    if not inspect.isfunction(obj):
        return False
    try:
        returns = typing.get_type_hints(obj).get("return")
    except Exception:  # an annotation that does not resolve says nothing about the kind
        return False
    return inspect.isclass(returns) and issubclass(returns, nn.Module)


MODELS: Registry[ModelFactory] = Registry(
    "models",
    importable=ImportKind(
        "an nn.Module subclass or a function annotated '-> nn.Module'", is_model_factory
    ),
)


def register_model(
    name: str, *, inputs: str | None = None
) -> Callable[[ModelFactory], ModelFactory]:
    """Register a model factory under ``name`` for use in scenarios.

    ``inputs`` describes the input shapes the model takes; ``fedsim list models``
    shows it after the factory's one-line summary.

    Examples
    --------
    >>> @register_model("tiny")
    ... def tiny(input_shape, num_classes, hidden=8):
    ...     ...
    """

    def decorator(factory: ModelFactory) -> ModelFactory:
        summary = (factory.__doc__ or "").strip().split("\n")[0]
        MODELS.add(name, factory, help=f"{summary} Input: {inputs}." if inputs else summary)
        return factory

    return decorator


def build_model(
    name: str, params: dict[str, Any], input_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    """Build a registered model for the given data shape.

    Raises
    ------
    ScenarioError
        If the name is unknown or the model cannot take this data (key ``model.name``
        or ``model.params``).
    """
    try:
        factory = MODELS.get(name)
    except UnknownNameError as exc:
        raise ScenarioError([exc.problem("model.name", "model")]) from None
    from fedsim.models.size_check import counted_parameters, size_problem

    too_big = size_problem(counted_parameters(factory, input_shape, num_classes, **params))
    if too_big is not None:  # counted on the meta device, before any memory is taken
        raise ScenarioError([too_big])
    try:
        return factory(input_shape, num_classes, **params)
    except IncompatibleDataError as exc:
        raise ScenarioError([Problem("model.name", str(exc))]) from None
    except TypeError as exc:
        raise ScenarioError([Problem("model.params", str(exc))]) from None
    except (RuntimeError, ValueError, IndexError, ZeroDivisionError) as exc:
        # torch's own shape errors while the factory builds (a pooling that shrinks
        # width 3 to nothing): the data's shape is what the user can change.
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ScenarioError(
            [
                Problem(
                    "model.name",
                    f"'{name}' cannot be built for examples of shape {tuple(input_shape)}: {first}",
                )
            ]
        ) from None


class IncompatibleDataError(ValueError):
    """A model factory was given data of a shape it cannot take."""


# Built-in models register themselves on import.
from fedsim.models import (  # noqa: E402, F401
    charlm,
    cnn,
    cosine,
    femnist_cnn,
    linear,
    lstm,
    mlp,
    resnet_gn,
)
