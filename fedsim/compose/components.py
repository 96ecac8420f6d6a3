"""Checks of the names and parameters a scenario gives registered components (for compose).

Strategy, model and engine names must resolve, their ``params`` must be keyword
parameters the component accepts (of the right type), wrapper strategies' inner
strategies likewise, and strategy node minimums must be reachable by the population.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from fedsim.algorithms.params import param_problems
from fedsim.algorithms.spec import StrategyLink
from fedsim.config.param_types import param_type_problems
from fedsim.config.plugins import import_plugins
from fedsim.config.schema import Scenario
from fedsim.errors import Problem, ScenarioError, UnknownNameError
from fedsim.population_bounds import fraction_problems
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


def check_components(
    scenario: Scenario, links: Sequence[StrategyLink], *, imports: bool = True
) -> list[Problem]:
    """Check the names and parameters that refer to registries.

    ``links`` is the scenario's strategy chain (:func:`fedsim.compose.walker.strategy_chain`).
    With ``imports=False`` a ``pkg.module:attr`` name is left unresolved (nothing is
    imported) and its parameters unchecked.
    """
    # Imported here: the registries pull in torch and flwr, which plain schema use avoids.
    from fedsim.engine.registry import ENGINES
    from fedsim.models import MODELS

    problems: list[Problem] = []
    for i, link in enumerate(links):
        key = f"{link.key}.params"
        typed = link.spec.params
        unknown = unknown_params(link.strategy_cls, link.params, key)
        if typed is not None:  # the algorithm's typed params: types and bounds
            problems += [
                Problem(f"{key}.{n}", text) for n, text in param_problems(typed, link.params)
            ]
        if i == 0 and not unknown:  # what no typed model covers: the signature's annotations
            rest = {
                k: v for k, v in link.params.items() if typed is None or k not in typed.model_fields
            }
            problems += param_type_problems(link.strategy_cls, rest, key)
        problems += unknown
    lookups: list[tuple[str, Any, str, Mapping[str, Any] | None, tuple[str, ...]]] = [
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
    return problems


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


def check_population(scenario: Scenario, links: Sequence[StrategyLink]) -> list[Problem]:
    """Refuse strategy node minimums the population can never meet (a run would wait forever)."""
    if not links:
        return []  # an unknown strategy: reported by the walk
    cls = links[0].strategy_cls
    if not inspect.isclass(cls):
        return []
    given = scenario.strategy.params
    # fedsim's own defaults (fedsim.compose.strategy.strategy_defaults): the whole population, no
    # federated evaluation; then the strategy's, then what the scenario sets.
    values = {**param_defaults(cls), "min_available_nodes": scenario.data.num_clients}
    values["fraction_evaluate"] = 0.0
    values.update(given)
    names = list(NODE_MINIMUMS)
    fraction = values.get("fraction_evaluate")
    if isinstance(fraction, int | float) and fraction > 0:
        names.append(EVALUATE_MINIMUM)
    n = scenario.data.num_clients
    # A share of 2.0 waits forever too (typed params bound their shares themselves).
    problems = fraction_problems(given) if links[0].spec.params is None else []
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
