"""Building the scenario's strategy: registry name, params, fedsim's defaults, wrappers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from flwr.serverapp.strategy import Strategy
from pydantic import ValidationError

from fedsim import wire
from fedsim.algorithms.compression.server import CompressedLinks
from fedsim.config.components import accepted_params
from fedsim.config.schema import DeviceTraceConfig, Scenario, StrategyConfig
from fedsim.errors import Problem, ScenarioError, UnknownNameError
from fedsim.strategies import STRATEGIES


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


def build_strategy(scenario: Scenario) -> Strategy:
    """Instantiate the scenario's strategy with its params (plus fedsim's defaults).

    A ``strategy`` param given as ``{name, params}`` (a wrapper's inner strategy, as in
    ``median-of-means``) is built the same way first. A ``compression`` section that
    codes either direction wraps the result in
    :class:`~fedsim.algorithms.compression.server.CompressedLinks`.
    """
    # With a device trace the population is never all online: a round waits for
    # `min_online` of them instead of everyone.
    trace = scenario.system.trace
    population = scenario.data.num_clients if trace is None else trace.min_online
    strategy = _build(scenario.strategy, population, "strategy", trace)
    if scenario.compression.active:
        try:
            strategy = CompressedLinks(
                strategy, downlink=scenario.compression.downlink, seed=scenario.seed
            )
        except ValueError as exc:
            raise ScenarioError([Problem("compression", str(exc))]) from None
    return strategy


def _build(
    config: StrategyConfig, population: int, key: str, trace: DeviceTraceConfig | None
) -> Strategy:
    try:
        cls = STRATEGIES.get(config.name)
    except UnknownNameError as exc:
        raise ScenarioError([exc.problem(f"{key}.name", "strategy")]) from None
    # Follows **kwargs into the Flower base class, so subclasses get the defaults too.
    accepted = accepted_params(cls) or []
    params = {k: v for k, v in strategy_defaults(population).items() if k in accepted}
    params.update(config.params)
    if "strategy" in accepted and "strategy" not in params:
        params["strategy"] = {"name": "fedavg"}  # a wrapper's default, with fedsim's defaults
    inner = params.get("strategy")
    if isinstance(inner, Mapping):
        try:
            inner_config = StrategyConfig.model_validate(dict(inner))
        except ValidationError as exc:
            raise ScenarioError([Problem(f"{key}.params.strategy", str(exc))]) from None
        params["strategy"] = _build(inner_config, population, f"{key}.params.strategy", trace)
    try:
        strategy = cls(**params)
    except (TypeError, ValueError) as exc:
        raise ScenarioError([Problem(_param_key(key, config.params, str(exc)), str(exc))]) from None
    if not isinstance(strategy, Strategy):
        raise ScenarioError([Problem(f"{key}.name", f"{cls!r} is not a flwr Strategy")])
    if trace is not None:
        _check_min_online(strategy, trace.min_online)
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
