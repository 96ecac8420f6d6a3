"""Checks that need the scenario's data loaded (its sizes and labels).

The runner's preflight makes them, and ``fedsim validate`` makes the same preflight,
so both refuse such a scenario alike, before a run directory is claimed; without them
the ServerApp would find the problem only once the run had started.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from fedsim.algorithms.spec import StrategyLink
from fedsim.config.schema import Scenario
from fedsim.data.federated import FederatedData
from fedsim.errors import Problem


@runtime_checkable
class DataCheck(Protocol):
    """A strategy class with a check of the loaded data (a classmethod ``check_data``).

    FedAwS needs each client to hold one class: with a natural partition only the
    data can say whether it does.
    """

    def check_data(self, scenario: Scenario, data: FederatedData) -> list[Problem]:
        """Return what this strategy cannot run with in ``data``."""


def data_problems(
    scenario: Scenario, links: Sequence[StrategyLink], data: FederatedData
) -> list[Problem]:
    """What the strategies' data checks and the offline sharing plan find in ``data``."""
    problems: list[Problem] = []
    if scenario.data.sharing is not None:  # the offline phase's plan fits the population
        from fedsim.data.sharing import sharing_plan

        try:
            sharing_plan(scenario.data, scenario.seed)
        except ValueError as exc:
            problems.append(Problem("data.sharing", str(exc)))
    for link in links:
        if isinstance(link.strategy_cls, DataCheck):
            problems += link.strategy_cls.check_data(scenario, data)
    return problems
