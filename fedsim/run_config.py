"""The scenario as ServerApp and ClientApp see it: a path in Flower's run config.

Both apps receive only ``run_config["scenario"]`` (the resolved YAML of one run), so
they run unchanged in-process, on Flower's Ray engine and under ``flower-supernode``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedsim import wire
from fedsim.errors import Problem, ScenarioError
from fedsim.scenario import Scenario
from fedsim.scenario_loading import load_scenario

_cache: dict[tuple[str, float], Scenario] = {}
_lock = threading.Lock()


def scenario_from_run_config(run_config: Mapping[str, Any]) -> Scenario:
    """Load (once per process and file version) the scenario a run config points to."""
    if wire.RUN_SCENARIO not in run_config:
        raise ScenarioError([Problem("", f"run config has no '{wire.RUN_SCENARIO}' key")])
    path = Path(str(run_config[wire.RUN_SCENARIO])).resolve()
    key = (str(path), path.stat().st_mtime if path.exists() else 0.0)
    with _lock:
        if key not in _cache:
            scenario = load_scenario(path)
            if not scenario.is_expanded:
                raise ScenarioError(
                    [Problem("", "the apps need one concrete run (no 'variants'/'seeds')")],
                    str(path),
                )
            _cache[key] = scenario
        return _cache[key]
