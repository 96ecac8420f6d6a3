"""One package per algorithm: ``fedsim/algorithms/<name>/``.

Each holds ``server.py`` (its Flower strategy), ``client.py`` (its local step and any
client action), ``keys.py`` (the message keys both halves use; they never import each
other) and, in ``__init__.py``, its :class:`~fedsim.algorithms.spec.AlgorithmSpec`.
Packages are found by looking in this folder: shipping one touches nothing outside it.
A plugin algorithm (one file anywhere) registers with :func:`register_algorithm`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from fedsim.algorithms.spec import AlgorithmSpec, StrategyLink, default_spec
from fedsim.registry import Registry

__all__ = [
    "ALGORITHMS",
    "AlgorithmSpec",
    "StrategyLink",
    "add_algorithm",
    "is_declared",
    "load_client_halves",
    "register_algorithm",
    "shipped_algorithms",
    "spec_of",
]

ALGORITHMS: Registry[AlgorithmSpec] = Registry("algorithms")
# The class attribute that named a strategy's local step before specs (old plugins).
LEGACY_STEP_ATTRIBUTE = "client_step"
_BY_SERVER: dict[str, AlgorithmSpec] = {}  # "module:Class" -> spec
_loaded = False

C = TypeVar("C", bound=type)


def add_algorithm(spec: AlgorithmSpec) -> AlgorithmSpec:
    """Register ``spec`` (a shipped package's ``__init__`` calls this)."""
    ALGORITHMS.add(spec.name, spec, help=spec.help)
    _BY_SERVER[spec.server] = spec
    return spec


def register_algorithm(
    name: str,
    *,
    client: str | None = None,
    steps: Sequence[str] = ("plain",),
    actions: Sequence[str] = (),
    reply_prefixes: Sequence[str] = (),
    dp_refusal: str | None = None,
    trains_with_loss: bool = True,
    needs: Sequence[str] = (),
    params: type[BaseModel] | None = None,
) -> Callable[[C], C]:
    """Register a strategy class as an algorithm, with its spec (public API).

    The class joins the strategy registry under ``name`` (so ``strategy.name: <name>``
    finds it) and validation reads the spec: a ``dp_refusal`` is refused under
    ``client.dp`` by ``fedsim validate`` and ``fedsim run`` alike, ``reply_prefixes``
    make the engine accept (and shape-check) those per-parameter reply arrays, and
    ``client`` names the module every ClientApp process imports for the algorithm's
    local steps and actions (default: the class's own module, for a one-file plugin).

    Examples
    --------
    >>> from fedsim.algorithms.fedavg.server import FedAvg
    >>> @register_algorithm("my-avg", steps=("my-step",), reply_prefixes=("my.",))
    ... class MyAvg(FedAvg):
    ...     pass
    """

    def decorator(cls: C) -> C:
        from fedsim.strategies import STRATEGIES

        STRATEGIES.add(name, cls)
        add_algorithm(
            AlgorithmSpec(
                name=name,
                server=f"{cls.__module__}:{cls.__qualname__}",
                client=client if client is not None else cls.__module__,
                steps=tuple(steps),
                actions=tuple(actions),
                reply_prefixes=tuple(reply_prefixes),
                dp_refusal=dp_refusal,
                trains_with_loss=trains_with_loss,
                needs=tuple(needs),
                params=params,
                help=(cls.__doc__ or "").strip().split("\n")[0],
            )
        )
        return cls

    return decorator


def shipped_algorithms() -> list[AlgorithmSpec]:
    """Import every package in this folder (each registers its spec); return all specs."""
    global _loaded
    if not _loaded:
        for module in pkgutil.iter_modules(__path__):
            if module.ispkg:
                importlib.import_module(f"{__name__}.{module.name}")
        _loaded = True
    return [ALGORITHMS.get(n) for n in ALGORITHMS.names()]


def load_client_halves() -> None:
    """Import every shipped algorithm's client half (its steps and actions register)."""
    for spec in shipped_algorithms():
        if spec.client is not None:
            importlib.import_module(spec.client)


def is_declared(spec: AlgorithmSpec) -> bool:
    """Whether ``spec`` was registered (not the default one of a strategy that has none)."""
    return _BY_SERVER.get(spec.server) is spec


def spec_of(name: str, strategy_cls: Any) -> AlgorithmSpec:
    """The spec of a strategy class: its own, else its nearest registered base's.

    A subclass of FedCurv without a spec of its own still sends FedCurv's step, so it
    inherits FedCurv's spec (under its own name); a class with no registered base gets
    the default spec (a Flower-like strategy). Plugins written before specs existed
    declared their local step as a ``client_step`` class attribute: it stands for
    ``steps=(client_step,)`` here, the one place that reads it, so their step's checks
    (its DP refusal) apply as to a spec's steps.
    """
    shipped_algorithms()
    if inspect.isclass(strategy_cls):
        for klass in strategy_cls.__mro__:
            spec = _BY_SERVER.get(f"{klass.__module__}:{klass.__qualname__}")
            if spec is not None:
                return spec
    server = f"{getattr(strategy_cls, '__module__', '?')}:{name}"
    legacy = getattr(strategy_cls, LEGACY_STEP_ATTRIBUTE, None)
    return default_spec(name, server, (legacy,) if isinstance(legacy, str) else ("plain",))
