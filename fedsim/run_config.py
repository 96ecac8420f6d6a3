"""The scenario as ServerApp and ClientApp see it: a path or the text in Flower's run config.

Both apps receive only ``run_config["scenario"]`` (the path of the resolved YAML of one
run) or, in a deployment whose nodes share no file system with the server,
``run_config["scenario-yaml"]`` (that YAML's text), so they run unchanged in-process,
on Flower's Ray engine and under ``flower-supernode``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fedsim import bounded_yaml, wire
from fedsim.errors import Problem, ScenarioError
from fedsim.scenario import Scenario
from fedsim.scenario_loading import load_scenario

_cache: dict[tuple[str, float, bool], Scenario] = {}
_lock = threading.Lock()
# run-config object id -> (that object, its scenario); see scenario_of_run_config.
_by_object: dict[int, tuple[Mapping[str, Any], Scenario]] = {}
_BY_OBJECT_MAX = 100_000


def scenario_from_run_config(run_config: Mapping[str, Any], *, imports: bool = True) -> Scenario:
    """Load (once per process and file version or text) the scenario of a run config.

    ``imports=False`` validates it without importing any ``pkg.module:attr`` name.
    """
    text = str(run_config.get(wire.RUN_SCENARIO_YAML) or "")
    if text:
        key = ("yaml:" + hashlib.sha256(text.encode()).hexdigest(), 0.0, imports)
        source = f"run config '{wire.RUN_SCENARIO_YAML}'"
    elif run_config.get(wire.RUN_SCENARIO):
        # Keyed by the path as given (resolving it costs more than a small client's
        # whole job); the modification time reloads a file rewritten in place.
        path = Path(str(run_config[wire.RUN_SCENARIO]))
        try:
            key = (str(path), os.stat(path).st_mtime, imports)
        except OSError:
            key = (str(path), 0.0, imports)
        source = str(path)
    else:
        raise ScenarioError(
            [
                Problem(
                    "",
                    f"run config has neither '{wire.RUN_SCENARIO}' nor '{wire.RUN_SCENARIO_YAML}'",
                )
            ]
        )
    with _lock:
        if key not in _cache:
            scenario = (
                _load_text(text, source, imports) if text else load_scenario(path, imports=imports)
            )
            if not scenario.is_expanded:
                raise ScenarioError(
                    [Problem("", "the apps need one concrete run (no 'variants'/'seeds')")], source
                )
            _cache[key] = scenario
        return _cache[key]


def scenario_of_run_config(run_config: Mapping[str, Any]) -> Scenario:
    """:func:`scenario_from_run_config`, remembered per run-config object.

    A node's Context keeps one run config for the whole run, so client mods that look
    the scenario up on every message skip the file's ``stat`` (tens of µs on a busy
    machine, more than a mod's own work). The object is kept alive with its entry, so
    its id cannot be reused for another run config while the entry exists.
    """
    entry = _by_object.get(id(run_config))
    if entry is not None and entry[0] is run_config:
        return entry[1]
    scenario = scenario_from_run_config(run_config)
    with _lock:
        if len(_by_object) >= _BY_OBJECT_MAX:
            _by_object.clear()
        _by_object[id(run_config)] = (run_config, scenario)
    return scenario


def _load_text(text: str, source: str, imports: bool) -> Scenario:
    """Validate a scenario given as YAML text."""
    try:
        raw = bounded_yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ScenarioError([Problem("", f"invalid YAML: {first}")], source) from None
    if not isinstance(raw, dict):
        raise ScenarioError([Problem("", "the scenario must be a mapping")], source)
    try:
        return load_scenario(raw, imports=imports)
    except ScenarioError as exc:
        raise exc.with_source(source) from None
