"""Checks of the names and parameters a scenario gives registered components.

Strategy, model and engine names must resolve, their ``params`` must be keyword
parameters the component accepts (of the right type), wrapper strategies' inner
strategies likewise, and strategy node minimums must be reachable by the population.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fedsim.config.param_types import param_type_problems
from fedsim.config.plugins import import_plugins
from fedsim.config.schema import Scenario
from fedsim.errors import Problem, ScenarioError, UnknownNameError
from fedsim.registry import is_import_path, suggest


def accepted_params(factory: Callable[..., Any], skip: Iterable[str] = ()) -> list[str] | None:
    """Keyword parameters ``factory`` accepts, or None if it takes any keyword.

    For a class, ``**kwargs`` forwarded to a base class (the usual way to extend a Flower
    strategy) is followed up the MRO, so the base's parameters count as accepted.
    """
    if inspect.isclass(factory):
        targets = [vars(c)["__init__"] for c in factory.__mro__ if "__init__" in vars(c)]
    else:
        targets = [factory]
    names: list[str] = []
    for target in targets:
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):
            return None
        names += [
            n
            for n, p in sig.parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in {"self", *skip}
        ]
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return names
    return None


def required_params(factory: Callable[..., Any], skip: Iterable[str] = ()) -> list[str]:
    """Parameters of ``factory`` (its ``__init__`` for a class) that have no default."""
    target = vars(factory).get("__init__", factory) if inspect.isclass(factory) else factory
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    return [
        n
        for n, p in sig.parameters.items()
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and n not in {"self", *skip}
    ]


def unknown_params(
    factory: Callable[..., Any], params: Mapping[str, Any], key: str, skip: Iterable[str] = ()
) -> list[Problem]:
    """Check ``params`` against ``factory``'s keyword parameters."""
    accepted = accepted_params(factory, skip)
    missing = [
        Problem(f"{key}.{name}", "required parameter is missing")
        for name in required_params(factory, skip)
        if name not in params
    ]
    if accepted is None:
        return missing
    return missing + [
        Problem(
            f"{key}.{name}",
            f"unknown key{suggest(name, accepted)}; valid keys: "
            f"{', '.join(sorted(set(accepted))) or '(none)'}",
        )
        for name in params
        if name not in accepted
    ]


def check_components(scenario: Scenario, *, imports: bool = True) -> list[Problem]:
    """Check the names and parameters that refer to registries.

    With ``imports=False`` a ``pkg.module:attr`` name is left unresolved (nothing is
    imported) and its parameters unchecked.
    """
    # Imported here: the registries pull in torch and flwr, which plain schema use avoids.
    from fedsim.engine.registry import ENGINES
    from fedsim.models import MODELS
    from fedsim.strategies import STRATEGIES

    problems: list[Problem] = []
    lookups: list[tuple[str, Any, str, Mapping[str, Any] | None, tuple[str, ...]]] = [
        ("strategy", STRATEGIES, scenario.strategy.name, scenario.strategy.params, ()),
        (
            "model",
            MODELS,
            scenario.model.name,
            scenario.model.params,
            ("input_shape", "num_classes"),
        ),
        ("engine", ENGINES, scenario.engine.name, None, ()),
    ]
    for section, registry, name, params, skip in lookups:
        if not imports and registry.importable is not None and is_import_path(name):
            continue
        try:
            component = registry.get(name)
        except UnknownNameError as exc:
            problems.append(exc.problem(f"{section}.name", section))
            continue
        if params is not None:
            unknown = unknown_params(component, params, f"{section}.params", skip=skip)
            problems += unknown or param_type_problems(component, params, f"{section}.params")
    problems += _inner_strategy_problems(scenario.strategy.params, "strategy.params.strategy")
    return problems


def _inner_strategy_problems(params: Mapping[str, Any], key: str) -> list[Problem]:
    """Check a wrapper's inner ``strategy: {name, params}`` (and its own inner one)."""
    from fedsim.strategies import STRATEGIES

    inner = params.get("strategy")
    if not isinstance(inner, Mapping):
        return []
    extra = sorted(set(inner) - {"name", "params"})
    if extra or not isinstance(inner.get("name"), str):
        return [Problem(key, "expected a mapping with 'name' (a strategy) and 'params'")]
    try:
        component = STRATEGIES.get(inner["name"])
    except UnknownNameError as exc:
        return [Problem(f"{key}.name", f"unknown strategy: {exc}")]
    inner_params = inner.get("params") or {}
    if not isinstance(inner_params, Mapping):
        return [Problem(f"{key}.params", "expected a mapping")]
    return unknown_params(component, inner_params, f"{key}.params") + _inner_strategy_problems(
        inner_params, f"{key}.params.strategy"
    )


# Flower strategy parameters that make a round wait until so many nodes exist; the
# evaluation count matters only when federated evaluation runs (fraction_evaluate > 0).
NODE_MINIMUMS = ("min_available_nodes", "min_train_nodes")
EVALUATE_MINIMUM = "min_evaluate_nodes"


def param_defaults(cls: type) -> dict[str, Any]:
    """Default values of ``cls``'s keyword parameters, following ``**kwargs`` up the MRO."""
    defaults: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = vars(klass).get("__init__")
        try:
            sig = inspect.signature(init) if init is not None else None
        except (TypeError, ValueError):
            sig = None
        if sig is not None:
            defaults.update(
                (n, p.default) for n, p in sig.parameters.items() if p.default is not p.empty
            )
    return defaults


def check_population(scenario: Scenario) -> list[Problem]:
    """Refuse strategy node minimums the population can never meet (a run would wait forever)."""
    from fedsim.strategies import STRATEGIES

    try:
        cls = STRATEGIES.get(scenario.strategy.name)
    except UnknownNameError:
        return []  # reported by check_components
    if not inspect.isclass(cls):
        return []
    given = scenario.strategy.params
    # fedsim's own defaults (fedsim.server.build.strategy_defaults): the whole population, no
    # federated evaluation; then the strategy's, then what the scenario sets.
    values = {**param_defaults(cls), "min_available_nodes": scenario.data.num_clients}
    values["fraction_evaluate"] = 0.0
    values.update(given)
    names = list(NODE_MINIMUMS)
    fraction = values.get("fraction_evaluate")
    if isinstance(fraction, int | float) and fraction > 0:
        names.append(EVALUATE_MINIMUM)
    n = scenario.data.num_clients
    problems: list[Problem] = []
    for name in names:
        need = values.get(name)
        if not isinstance(need, int) or need <= n:
            continue
        text = f"{need} nodes needed but data.num_clients is {n}: the run would wait forever"
        if name in given:
            problems.append(Problem(f"strategy.params.{name}", text))
        else:
            problems.append(
                Problem(
                    "data.num_clients",
                    f"strategy '{scenario.strategy.name}' needs at least {need} nodes "
                    f"({name}={need}); raise data.num_clients or set "
                    f"strategy.params.{name}",
                )
            )
    return problems


def raw_name_problems(raw: Mapping[str, Any], *, imports: bool = True) -> list[Problem]:
    """Unknown strategy and model names of a mapping that failed the schema.

    The plugins it lists are imported first (with ``imports``), as for a valid one.
    """
    from fedsim.models import MODELS
    from fedsim.strategies import STRATEGIES

    problems: list[Problem] = []
    plugins = raw.get("plugins")
    if imports and isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):
        try:
            import_plugins(plugins)
        except ScenarioError as exc:
            problems += exc.problems
    for section, registry in (("strategy", STRATEGIES), ("model", MODELS)):
        value = raw.get(section)
        name = value.get("name") if isinstance(value, Mapping) else None
        if not isinstance(name, str) or (not imports and is_import_path(name)):
            continue
        try:
            registry.get(name)
        except UnknownNameError as exc:
            problems.append(exc.problem(f"{section}.name", section))
    return problems
