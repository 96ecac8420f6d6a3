"""The one walk over a scenario's strategy and the strategies it wraps.

A wrapper strategy (``median-of-means``) names its inner one as ``params.strategy:
{name, params}``, which may wrap another. Validation, the combination rules, the
population check and the builder all need that chain; :func:`strategy_chain` is the
only code that walks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedsim.algorithms import spec_of
from fedsim.algorithms.spec import StrategyLink
from fedsim.compose.components import accepted_params
from fedsim.errors import Problem, UnknownNameError
from fedsim.strategies import STRATEGIES

# A wrapper whose scenario names no inner strategy wraps this one.
DEFAULT_INNER = "fedavg"


def strategy_chain(
    name: str, params: Mapping[str, Any], key: str = "strategy"
) -> tuple[list[StrategyLink], list[Problem]]:
    """The strategy ``name`` and every strategy inside it, outermost first.

    Returns the links found and the problems that ended the walk (an unknown name, an
    inner ``strategy`` that is not ``{name, params}``); a name that is an import path
    is imported (the caller decides whether it may be).
    """
    links: list[StrategyLink] = []
    outer = True
    while True:
        try:
            cls = STRATEGIES.get(name)
        except UnknownNameError as exc:
            problem = (
                exc.problem(f"{key}.name", "strategy")
                if outer
                else Problem(f"{key}.name", f"unknown strategy: {exc}")
            )
            return links, [problem]
        accepted = accepted_params(cls)
        link = StrategyLink(
            key=key,
            name=name,
            params=dict(params),
            spec=spec_of(name, cls),
            strategy_cls=cls,
            accepted=None if accepted is None else tuple(accepted),
        )
        links.append(link)
        inner = params.get("strategy")
        if inner is None and accepted is not None and "strategy" in accepted:
            inner = {"name": DEFAULT_INNER}  # what the builder gives a wrapper by default
        if not isinstance(inner, Mapping):
            return links, []  # no inner strategy (or a built one, from Python)
        key = f"{key}.params.strategy"
        extra = sorted(set(inner) - {"name", "params"})
        if extra or not isinstance(inner.get("name"), str):
            return links, [Problem(key, "expected a mapping with 'name' (a strategy) and 'params'")]
        inner_params = inner.get("params") or {}
        if not isinstance(inner_params, Mapping):
            return links, [Problem(f"{key}.params", "expected a mapping")]
        name, params, outer = inner["name"], inner_params, False
