"""Composition: the one place that builds and checks what a scenario names.

:func:`compose` takes a schema-valid :class:`~fedsim.config.schema.Scenario` and checks
every component it refers to (the strategy chain, walked once, with each algorithm's
spec; model, engine, trackers and callbacks; the combination rules; the strategy and
model actually built) and returns what a run needs, or raises one
:class:`~fedsim.errors.ScenarioError` listing every problem. ``fedsim validate``
(through :func:`load_scenario`), the runner's preflight (before a run directory is
claimed) and the ServerApp all call it, so they refuse exactly the same scenarios. It
runs once per process per scenario (by digest): later calls return the same result.
"""

from __future__ import annotations

import hashlib
import importlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flwr.serverapp.strategy import Strategy

from fedsim.algorithms.spec import StrategyLink
from fedsim.compose.components import check_components, check_population, raw_name_problems
from fedsim.compose.strategy import build_strategy
from fedsim.compose.walker import strategy_chain
from fedsim.config.expand import expand
from fedsim.config.rules import check_combinations
from fedsim.config.schema import Scenario
from fedsim.config.sources import parse_mapping, read_raw
from fedsim.errors import DataUnavailableError, Problem, ScenarioError
from fedsim.registry import is_import_path

__all__ = ["Composition", "combination_problems", "compose", "load_scenario", "validate_mapping"]


@dataclass(frozen=True)
class Composition:
    """What a run needs of its scenario, checked.

    Attributes
    ----------
    scenario : Scenario
        The scenario (one concrete run, or a scenario with variants).
    chain : tuple of StrategyLink
        Its strategy and every strategy inside it, outermost first, each with its spec.
    """

    scenario: Scenario
    chain: tuple[StrategyLink, ...]

    @property
    def reply_prefixes(self) -> tuple[str, ...]:
        """Per-parameter reply array prefixes of every algorithm in the chain."""
        return tuple(dict.fromkeys(p for link in self.chain for p in link.spec.reply_prefixes))

    def build_strategy(self) -> Strategy:
        """A fresh strategy (strategies keep state: one per run)."""
        return build_strategy(self.scenario, self.chain)


_COMPOSED: dict[tuple[str, bool], Composition] = {}
# Full checks run in this process, by scenario digest (tests read it).
CHECKS_RUN: Counter[str] = Counter()


def digest(scenario: Scenario) -> str:
    """A scenario's content digest (two equal scenarios have the same)."""
    return hashlib.sha256(scenario.model_dump_json().encode()).hexdigest()


def compose(scenario: Scenario, *, imports: bool = True) -> Composition:
    """Check everything ``scenario`` names; return what a run needs.

    ``imports=False`` imports no ``pkg.module:attr`` name (those components go
    unchecked) and builds nothing.

    Raises
    ------
    ScenarioError
        Listing every problem found, each naming its key.
    """
    key = (digest(scenario), imports)
    done = _COMPOSED.get(key)
    if done is not None:
        return done
    if imports:
        CHECKS_RUN[key[0]] += 1
    name, params = scenario.strategy.name, scenario.strategy.params
    links: list[StrategyLink] = []
    problems: list[Problem] = []
    if imports or not is_import_path(name):
        links, problems = strategy_chain(name, params)
    problems += check_components(scenario, links, imports=imports)
    from fedsim.outputs.callbacks import output_problems

    problems += output_problems(scenario, imports=imports)
    if imports:  # both look strategies up, which imports a `pkg.module:Class` name
        problems = problems or check_population(scenario, links)
        problems += check_combinations(scenario, links)
        problems += _step_problems(scenario, links)
        problems += _checkpoint_problems(scenario, links)
        if not problems:  # build what is named: its own checks run (no data, no training)
            problems += _built_problems(scenario, links)
    if problems:
        raise ScenarioError(_unique(problems))
    composition = Composition(scenario, tuple(links))
    _COMPOSED[key] = composition
    return composition


def combination_problems(scenario: Scenario) -> list[Problem]:
    """What the combination rules find in ``scenario`` (its chain walked here)."""
    links, _ = strategy_chain(scenario.strategy.name, scenario.strategy.params)
    return check_combinations(scenario, links)


def _unique(problems: list[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


def _step_problems(scenario: Scenario, links: Iterable[StrategyLink]) -> list[Problem]:
    """Each step a spec names is registered, and none that refuses ``client.dp`` runs with it.

    Importing the spec's client half registers its steps. The step's own refusal counts
    even where the spec declares none (a plain ``register_strategy`` class whose step
    refuses): the clients would refuse every job at run time.
    """
    from fedsim.algorithms import load_client_halves
    from fedsim.client.steps import STEPS

    load_client_halves()  # a plugin may name a shipped step (a ClientApp has them all)
    problems = []
    for link in links:
        if link.spec.client is not None:
            importlib.import_module(link.spec.client)
        for step in link.spec.steps:
            if step not in STEPS:
                text = f"algorithm '{link.spec.name}' names local step '{step}', which no "
                problems.append(Problem(f"{link.key}.name", text + "module registered"))
                continue
            refusal = STEPS.get(step).dp_refusal
            if scenario.client.dp is not None and refusal is not None and not link.spec.dp_refusal:
                text = f"cannot be used with strategy '{link.name}': its clients run local step"
                problems.append(Problem("client.dp", f"{text} '{step}': {refusal}"))
    return problems


def _checkpoint_problems(scenario: Scenario, links: list[StrategyLink]) -> list[Problem]:
    """Checkpoints need an engine that can save its nodes and Flower's round loop."""
    from fedsim.config.schema import ENGINE_SECTIONS
    from fedsim.server.loop import uses_flower_loop_class

    if scenario.output.checkpoint_every is None:
        return []
    problems = []
    if not scenario.engine.resumable:
        able = [c.model_fields["name"].default for c in ENGINE_SECTIONS if c.resumable]
        problems.append(
            Problem(
                "output.checkpoint_every",
                f"engine '{scenario.engine.name}' cannot checkpoint its nodes' state; "
                f"engines that can: {', '.join(sorted(able))}",
            )
        )
    if links and not uses_flower_loop_class(links[0].strategy_cls):
        problems.append(
            Problem(
                "output.checkpoint_every",
                f"strategy '{scenario.strategy.name}' runs its own loop (overrides start) "
                "and cannot be checkpointed",
            )
        )
    return problems


def _built_problems(scenario: Scenario, links: list[StrategyLink]) -> list[Problem]:
    """Build the strategy, and the model for the dataset's shape when that is known."""
    from fedsim.data.shapes import model_input
    from fedsim.models import build_model

    problems: list[Problem] = []
    try:
        strategy = build_strategy(scenario, links)
    except ScenarioError as exc:
        problems += exc.problems
    else:
        problems += _probed_problems(scenario, links, strategy)
    try:
        shape = model_input(scenario.data.dataset)
    except DataUnavailableError:  # a missing file: validate and the run's preflight say so
        shape = None
    if shape is not None:
        try:
            build_model(scenario.model.name, dict(scenario.model.params), *shape)
        except ScenarioError as exc:
            problems += exc.problems
    return problems


def _probed_problems(
    scenario: Scenario, links: list[StrategyLink], strategy: Strategy
) -> list[Problem]:
    """The steps a chain without a declared spec selects at run time, checked as a spec's.

    A plain ``register_strategy`` class chooses its clients' step in ``configure_train``;
    one dry call (:mod:`fedsim.compose.probe`) says which, so a step no module registered,
    or one that refuses ``client.dp``, is refused here rather than on every client.
    """
    from fedsim.algorithms import is_declared
    from fedsim.compose.probe import probed_steps
    from fedsim.server.loop import uses_flower_loop_class

    if all(is_declared(link.spec) for link in links):
        return []
    if not uses_flower_loop_class(links[0].strategy_cls):
        return []
    steps = probed_steps(strategy, scenario.data.num_clients)
    if not steps:
        return []
    probed = replace(links[0], spec=replace(links[0].spec, steps=steps))
    return _step_problems(scenario, [probed])


def validate_mapping(raw: Mapping[str, Any], *, imports: bool = True) -> Scenario:
    """Validate a raw mapping into a :class:`Scenario` and compose it (every check)."""
    try:
        scenario = parse_mapping(raw, imports=imports)
    except ScenarioError as exc:
        # One pass: the names the schema cannot check are reported with its errors.
        names = [p for p in raw_name_problems(raw, imports=imports) if p not in exc.problems]
        raise ScenarioError([*exc.problems, *names]) from None
    compose(scenario, imports=imports)
    return scenario


def load_scenario(
    source: str | Path | Mapping[str, Any],
    overrides: Iterable[str] = (),
    *,
    imports: bool = True,
    plugins: Iterable[str] = (),
    sweeps: Iterable[str] = (),
) -> Scenario:
    """Load a scenario and check it, and every variant it declares, completely.

    Parameters
    ----------
    source : str, Path or mapping
        A YAML file, or an already-parsed mapping.
    overrides : iterable of str
        ``dotted.key=value`` strings applied before validation.
    imports : bool
        False: leave ``pkg.module:attr`` names unresolved and ``plugins`` unimported, so
        an untrusted file is checked without running any of its code (see
        :mod:`fedsim.config.import_paths`).
    plugins : iterable of str
        Modules added to the scenario's ``plugins`` (``fedsim run --import``).
    sweeps : iterable of str
        ``dotted.key=v1,v2`` grid axes added to the scenario's ``sweep``.

    Returns
    -------
    Scenario
        The validated scenario; use :func:`fedsim.config.expand.expand` for its runs.

    Raises
    ------
    ScenarioError
        Listing every problem, each naming its dotted key.
    """
    label = None if isinstance(source, Mapping) else str(source)
    try:
        scenario = validate_mapping(read_raw(source, overrides, plugins, sweeps), imports=imports)
        for run in expand(scenario, imports=imports):
            try:
                compose(run, imports=imports)
            except ScenarioError as exc:
                prefix = _run_prefix(scenario, run)
                raise (exc.with_prefix(prefix) if prefix else exc) from None
    except ScenarioError as exc:
        raise (exc.with_source(label) if label and exc.source is None else exc) from None
    return scenario


def _run_prefix(scenario: Scenario, run: Scenario) -> str:
    """The key a run's problems are reported under: its variant, or the sweep."""
    label = run.variant or ""
    for name in sorted(scenario.variants, key=len, reverse=True):
        if label == name or label.startswith(f"{name}_"):
            return f"variants.{name}"
    return "sweep" if scenario.sweep else ""
