"""Scenario sources: YAML, then ``--set``, then ``--sweep``, then ``--import``.

Read into a mapping, overridden, and checked against the schema (every failure a
:class:`~fedsim.errors.Problem` naming the dotted key). What the scenario's names refer
to is checked by :func:`fedsim.compose.compose`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedsim.config import bounded_yaml
from fedsim.config.bounded_yaml import YamlBombError
from fedsim.config.plugins import import_plugins
from fedsim.config.problems import problems_from_validation
from fedsim.config.schema import Scenario
from fedsim.errors import Problem, ScenarioError

# ------------------------------------------------------------------ raw mappings


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a scenario file into a plain mapping.

    Raises
    ------
    ScenarioError
        If the file is missing, empty, not YAML, or not a mapping at the top.
    """
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise ScenarioError([Problem("", "file not found")], source)
    try:
        raw = bounded_yaml.safe_load(p.read_text(encoding="utf-8"))
    except YamlBombError as exc:
        raise ScenarioError([Problem("", f"refused: {exc}")], source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError([Problem("", f"YAML syntax error at {where}{what}")], source) from None
    except UnicodeDecodeError:
        raise ScenarioError([Problem("", "not a UTF-8 text file")], source) from None
    if raw is None:
        raise ScenarioError([Problem("", "the file is empty")], source)
    if not isinstance(raw, dict):
        raise ScenarioError(
            [Problem("", f"expected a mapping of sections, got {type(raw).__name__}")], source
        )
    return raw


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``dotted.key=value``; the value is parsed as YAML (``0.1``, ``[1, 2]``, ``null``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ScenarioError([Problem("--set", f"'{text}' is not of the form dotted.key=value")])
    try:
        parsed = bounded_yaml.safe_load(value) if value.strip() else ""
    except YamlBombError as exc:
        raise ScenarioError([Problem("--set", f"{key.strip()}: refused: {exc}")]) from None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """Split ``dotted.key=v1,v2,...`` (``--sweep``); each value is parsed as YAML."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise ScenarioError([Problem("--sweep", f"'{text}' is not of the form dotted.key=v1,v2")])
    return key.strip(), [parse_override(f"{key}={v.strip()}")[1] for v in values.split(",")]


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``key == "a.b.c"``, creating mappings on the way."""
    parts = key.split(".")
    node: dict[str, Any] = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if isinstance(child, str):
            # A shorthand such as `dataset: digits` becomes a mapping when a sub-key is set.
            child = {"name": child}
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise ScenarioError(
                [Problem(".".join(parts[: i + 1]), "is not a mapping, cannot set a sub-key")]
            )
        node[part] = child
        node = child
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``; dotted keys in ``override`` are paths."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if "." in key:
            set_dotted(merged, key, copy.deepcopy(value))
        elif isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# --------------------------------------------------------------------- public API


def parse_mapping(raw: Mapping[str, Any], *, imports: bool = True) -> Scenario:
    """Validate a raw mapping against the schema into a :class:`Scenario`.

    Only the schema and the plugins (imported with ``imports``, before any name is
    looked up: they register names); what the names refer to is checked by
    :func:`fedsim.compose.compose`.
    """
    try:
        scenario = Scenario.model_validate(dict(raw))
    except ValidationError as exc:
        raise ScenarioError(problems_from_validation(exc)) from None
    if imports:
        import_plugins(scenario.plugins)
    return _with_natural_client_count(scenario)


def _with_natural_client_count(scenario: Scenario) -> Scenario:
    """Fill in ``data.num_clients`` (one client per id) for a natural partition without it."""
    data = scenario.data
    if data.partitioner.name != "natural" or "num_clients" in data.model_fields_set:
        return scenario
    from fedsim.data.federated import count_client_ids  # loads (and caches) the dataset

    count = count_client_ids(data.dataset, data.test_fraction)
    if count == 0:
        raise ScenarioError(
            [Problem("data.partitioner.name", "'natural' needs a per-example client id")]
        )
    # Validated again rather than copied, so the count meets the schema's bounds.
    raw = scenario.model_dump(mode="json")
    raw["data"]["num_clients"] = count
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        raise ScenarioError(problems_from_validation(exc)) from None


def read_raw(
    source: str | Path | Mapping[str, Any],
    overrides: Iterable[str] = (),
    plugins: Iterable[str] = (),
    sweeps: Iterable[str] = (),
) -> dict[str, Any]:
    """``source`` as a mapping: ``overrides`` set, ``sweeps`` and ``plugins`` added."""
    raw = dict(copy.deepcopy(source)) if isinstance(source, Mapping) else read_yaml(source)
    for text in overrides:
        set_dotted(raw, *parse_override(text))
    for text in sweeps:
        key, values = parse_sweep(text)
        raw["sweep"] = {**(raw.get("sweep") or {}), key: values}
    given = raw.get("plugins")
    listed: list[Any] = given if isinstance(given, list) else []
    extra = [p for p in plugins if p not in listed]
    if extra:
        raw["plugins"] = [*listed, *extra]
    return raw


def read_scenario(
    source: str | Path | Mapping[str, Any],
    overrides: Iterable[str] = (),
    *,
    imports: bool = True,
    plugins: Iterable[str] = (),
    sweeps: Iterable[str] = (),
) -> Scenario:
    """Read a scenario and check it (and every variant it declares) against the schema.

    :func:`fedsim.load_scenario` (:func:`fedsim.compose.load_scenario`) adds the checks
    of what its names refer to; see there for the parameters.
    """
    from fedsim.config.expand import expand  # it parses with this module

    label = None if isinstance(source, Mapping) else str(source)
    try:
        scenario = parse_mapping(read_raw(source, overrides, plugins, sweeps), imports=imports)
        expand(scenario, imports=imports)  # a variant breaking the schema: the file is wrong
    except ScenarioError as exc:
        raise (exc.with_source(label) if label and exc.source is None else exc) from None
    return scenario


def to_yaml(scenario: Scenario) -> str:
    """Serialise a scenario as YAML that :func:`load_scenario` reads back identically."""
    data = scenario.model_dump(mode="json", exclude_none=False)
    return yaml.safe_dump(data, sort_keys=False)


# Names this module held before it was split (``fedsim.scenario_loading.expand`` etc.):
# still importable from here (lazily: fedsim.compose imports this module) for outside
# code; fedsim imports them from where they are.
_MOVED_OUT = {
    "expand": "fedsim.config.expand",
    "sweep_grid": "fedsim.config.expand",
    "run_label": "fedsim.config.expand",
    "problems_from_validation": "fedsim.config.problems",
    "accepted_params": "fedsim.compose.components",
    "required_params": "fedsim.compose.components",
    "unknown_params": "fedsim.compose.components",
    "param_defaults": "fedsim.compose.components",
    "NODE_MINIMUMS": "fedsim.compose.components",
    "EVALUATE_MINIMUM": "fedsim.compose.components",
    "check_components": "fedsim.compose.components",
    # Loading checks what names refer to: that is composition's job now.
    "load_scenario": "fedsim.compose",
    "validate_mapping": "fedsim.compose",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED_OUT:
        import importlib

        return getattr(importlib.import_module(_MOVED_OUT[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
