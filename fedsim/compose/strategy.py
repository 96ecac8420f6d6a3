"""Building the scenario's strategy from its chain: params, fedsim's defaults, wrappers."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from flwr.serverapp.strategy import Strategy

from fedsim import wire
from fedsim.algorithms.compression.server import CompressedLinks
from fedsim.algorithms.spec import StrategyLink
from fedsim.config.schema import Scenario
from fedsim.errors import Problem, ScenarioError


def strategy_defaults(num_clients: int) -> dict[str, Any]:
    """fedsim's defaults for Flower strategy parameters the scenario leaves unset.

    Central evaluation replaces Flower's federated evaluation by default
    (``fraction_evaluate=0``), a round waits until the whole population is connected
    (``min_available_nodes``), so a deployment's first round does not train fewer
    clients than a simulation's, and strategies that read a training loss read
    fedsim's ``train-loss`` metric.
    """
    return {
        "fraction_evaluate": 0.0,
        "min_available_nodes": num_clients,
        "train_loss_key": wire.TRAIN_LOSS,  # QFedAvg reads the clients' training loss
    }


def build_strategy(scenario: Scenario, links: Sequence[StrategyLink] | None = None) -> Strategy:
    """Instantiate the scenario's strategy with its params (plus fedsim's defaults).

    ``links`` is the scenario's strategy chain (walked here if not given): a wrapper's
    inner strategy (``params.strategy: {name, params}``, as in ``median-of-means``) is
    built first, the same way. A ``compression`` section that codes either direction
    wraps the result in :class:`~fedsim.algorithms.compression.server.CompressedLinks`.
    """
    if links is None:
        from fedsim.compose.walker import strategy_chain

        links, problems = strategy_chain(scenario.strategy.name, scenario.strategy.params)
        if problems:
            raise ScenarioError(problems)
    # With a device trace the population is never all online: a round waits for
    # `min_online` of them instead of everyone.
    trace = scenario.system.trace
    population = scenario.data.num_clients if trace is None else trace.min_online
    strategy: Strategy | None = None
    for link in reversed(links):  # innermost first
        strategy = _build(link, population, strategy)
        if trace is not None:
            _check_min_online(strategy, trace.min_online)
    assert strategy is not None, "a chain has at least the scenario's strategy"
    if scenario.compression.active:
        try:
            strategy = CompressedLinks(
                strategy, downlink=scenario.compression.downlink, seed=scenario.seed
            )
        except ValueError as exc:
            raise ScenarioError([Problem("compression", str(exc))]) from None
    return strategy


def _build(link: StrategyLink, population: int, inner: Strategy | None) -> Strategy:
    # Follows **kwargs into the Flower base class, so subclasses get the defaults too.
    accepted = link.accepted or ()
    params = {k: v for k, v in strategy_defaults(population).items() if k in accepted}
    params.update(link.params)
    if inner is not None:
        params["strategy"] = inner
    try:
        strategy = link.strategy_cls(**params)
    except (TypeError, ValueError) as exc:
        key = _param_key(link.key, link.params, str(exc))
        raise ScenarioError([Problem(key, str(exc))]) from None
    if not isinstance(strategy, Strategy):
        cls = link.strategy_cls
        raise ScenarioError([Problem(f"{link.key}.name", f"{cls!r} is not a flwr Strategy")])
    return strategy


def _param_key(key: str, given: Mapping[str, Any], message: str) -> str:
    """``strategy.params.<name>`` when the strategy's message starts with a given name."""
    named = next((n for n in given if re.match(rf"{re.escape(n)}\b", message)), None)
    return f"{key}.params" if named is None else f"{key}.params.{named}"


def _check_min_online(strategy: Strategy, min_online: int) -> None:
    """Refuse minimum node counts above ``system.trace.min_online``.

    Flower waits (in wall-clock time) for its minimum node counts; a trace's grid
    guarantees ``min_online`` nodes, so a strategy that waits for more never starts.
    """
    waits = {
        name: getattr(strategy, name)
        for name in ("min_available_nodes", "min_train_nodes", "min_evaluate_nodes")
        if isinstance(getattr(strategy, name, None), int)
    }
    if not getattr(strategy, "fraction_evaluate", 1.0):
        waits.pop("min_evaluate_nodes", None)  # no federated evaluation: never waited for
    over = {k: v for k, v in waits.items() if v > min_online}
    if over:
        listed = ", ".join(f"strategy.params.{k}={v}" for k, v in over.items())
        raise ScenarioError(
            [Problem("system.trace.min_online", f"must be at least {listed} (got {min_online})")]
        )
