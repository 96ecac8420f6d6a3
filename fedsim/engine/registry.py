"""Engines by registry name (the ``engine.name`` key)."""

from __future__ import annotations

from typing import Protocol

from flwr.app import UserConfig

from fedsim.config.schema import Scenario
from fedsim.registry import Registry


class Engine(Protocol):
    """Runs fedsim's Flower app (:mod:`fedsim.apps`) for one run, to completion."""

    def __call__(self, scenario: Scenario, run_config: UserConfig) -> None:
        """Run the scenario's population; the ServerApp writes the run's outputs."""


ENGINES: Registry[Engine] = Registry("engines")


def _register_builtin() -> None:
    from fedsim.engine.inprocess_run import run_inprocess
    from fedsim.engine.ray_engine import run_ray

    ENGINES.add("inprocess", run_inprocess, help="in-process grid with a virtual clock (default)")
    ENGINES.add("ray", run_ray, help="Flower's Ray simulation engine (fedsim[ray]; clusters too)")


_register_builtin()
