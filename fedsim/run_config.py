"""The scenario as ServerApp and ClientApp see it: a path or the text in Flower's run config.

Both apps receive only ``run_config["scenario"]`` (the path of the resolved YAML of one
run) or, in a deployment whose nodes share no file system with the server,
``run_config["scenario-yaml"]`` (that YAML's text), so they run unchanged in-process,
on Flower's Ray engine and under ``flower-supernode``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fedsim import wire
from fedsim.config import bounded_yaml
from fedsim.config.schema import Scenario
from fedsim.config.sources import parse_mapping
from fedsim.errors import Problem, ScenarioError

# By (the SHA-256 of the scenario's text, whether its import paths were imported).
_cache: dict[tuple[str, bool], Scenario] = {}
_lock = threading.Lock()
# run-config object id -> (that object, its scenario); see scenario_of_run_config.
_by_object: dict[int, tuple[Mapping[str, Any], Scenario]] = {}
_BY_OBJECT_MAX = 100_000


def scenario_digest(text: str | bytes) -> str:
    """The SHA-256 that pins a resolved scenario's text (``run_config["scenario-sha256"]``)."""
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def scenario_from_run_config(run_config: Mapping[str, Any], *, imports: bool = True) -> Scenario:
    """Load (once per process and content) the scenario of a run config.

    ``imports=False`` validates it without importing any ``pkg.module:attr`` name.

    A scenario given by path is pinned by ``run_config["scenario-sha256"]``: the file
    is read once, and only if its content has that digest (a file rewritten while the
    run goes on, by hand or by another run, is an error, never silently used). Without
    a digest the file is read on every call and cached by its content.
    """
    text = str(run_config.get(wire.RUN_SCENARIO_YAML) or "")
    if text:
        source = f"run config '{wire.RUN_SCENARIO_YAML}'"
        key = scenario_digest(text)
        pinned = None
    elif run_config.get(wire.RUN_SCENARIO):
        source = str(run_config[wire.RUN_SCENARIO])  # a Path only when read (~9 µs a call)
        pinned = str(run_config.get(wire.RUN_SCENARIO_SHA256) or "") or None
        key = pinned or ""
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
        scenario = _cache.get((key, imports)) if key else None
        if scenario is not None:
            return scenario  # the hot path: one dict lookup per client call
        if not text:
            text, key = _read_pinned(Path(source), pinned)
            scenario = _cache.get((key, imports))
            if scenario is not None:
                return scenario
        scenario = _load_text(text, source, imports)
        if not scenario.is_expanded:
            raise ScenarioError(
                [Problem("", "the apps need one concrete run (no 'variants'/'seeds')")], source
            )
        _cache[key, imports] = scenario
        return scenario


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


def _read_pinned(path: Path, pinned: str | None) -> tuple[str, str]:
    """The file's text and digest, checked against ``pinned`` when there is one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScenarioError([Problem("", f"cannot read the scenario: {exc}")], str(path)) from None
    digest = scenario_digest(data)
    if pinned is not None and digest != pinned:
        raise ScenarioError(
            [
                Problem(
                    "",
                    f"changed since the run started (sha256 {digest[:12]}..., the run pinned "
                    f"{pinned[:12]}...); a run directory belongs to one run",
                )
            ],
            str(path),
        )
    try:
        return data.decode("utf-8"), digest
    except UnicodeDecodeError:
        raise ScenarioError([Problem("", "not a UTF-8 text file")], str(path)) from None


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
        # The schema (and the plugins) only: the ServerApp composes the scenario, and a
        # client needs no more than its own sections.
        return parse_mapping(raw, imports=imports)
    except ScenarioError as exc:
        raise exc.with_source(source) from None
