"""Scenario files to validated :class:`~fedsim.config.schema.Scenario` objects.

Reading YAML, ``--set key=value`` overrides, variant x seed expansion and the
conversion of every validation failure into :class:`~fedsim.errors.Problem` lines
that name the dotted key and the valid choices.
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
from fedsim.config.components import check_components, check_population, raw_name_problems
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


def validate_mapping(raw: Mapping[str, Any], *, imports: bool = True) -> Scenario:
    """Validate a raw mapping into a :class:`Scenario`, checking registry names too.

    ``imports=False`` validates without importing any ``pkg.module:attr`` name.
    """
    try:
        scenario = Scenario.model_validate(dict(raw))
    except ValidationError as exc:
        schema = problems_from_validation(exc)
        # One pass: the names the schema cannot check are reported with its errors.
        schema += [p for p in raw_name_problems(raw, imports=imports) if p not in schema]
        raise ScenarioError(schema) from None
    from fedsim.config.rules import check_combinations
    from fedsim.outputs.callbacks import output_problems

    problems: list[Problem] = []
    if imports:  # before any name is looked up: plugins register names
        try:
            import_plugins(scenario.plugins)
        except ScenarioError as exc:
            problems += exc.problems
    problems += check_components(scenario, imports=imports)
    problems += output_problems(scenario, imports=imports)
    if imports:  # both look strategies up, which imports a `pkg.module:Class` name
        problems = problems or check_population(scenario)
        problems += check_combinations(scenario)
    if problems:
        raise ScenarioError(problems)
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


def load_scenario(
    source: str | Path | Mapping[str, Any],
    overrides: Iterable[str] = (),
    *,
    imports: bool = True,
    plugins: Iterable[str] = (),
    sweeps: Iterable[str] = (),
) -> Scenario:
    """Load and validate a scenario (and every variant it declares).

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
        The validated scenario; use :func:`expand` for its concrete runs.

    Raises
    ------
    ScenarioError
        Listing every problem, each naming its dotted key.
    """
    label = None if isinstance(source, Mapping) else str(source)
    try:
        scenario = validate_mapping(read_raw(source, overrides, plugins, sweeps), imports=imports)
        from fedsim.config.expand import expand  # it validates with this module

        expand(scenario, imports=imports)  # a variant breaking the schema: the file is wrong
    except ScenarioError as exc:
        raise (exc.with_source(label) if label and exc.source is None else exc) from None
    return scenario


def to_yaml(scenario: Scenario) -> str:
    """Serialise a scenario as YAML that :func:`load_scenario` reads back identically."""
    data = scenario.model_dump(mode="json", exclude_none=False)
    return yaml.safe_dump(data, sort_keys=False)


# Names this module held before it was split (``fedsim.scenario_loading.expand`` etc.):
# still importable from here for outside code; fedsim imports them from their modules.
_MOVED_OUT = {
    "expand": "fedsim.config.expand",
    "sweep_grid": "fedsim.config.expand",
    "run_label": "fedsim.config.expand",
    "problems_from_validation": "fedsim.config.problems",
    "accepted_params": "fedsim.config.components",
    "required_params": "fedsim.config.components",
    "unknown_params": "fedsim.config.components",
    "param_defaults": "fedsim.config.components",
    "NODE_MINIMUMS": "fedsim.config.components",
    "EVALUATE_MINIMUM": "fedsim.config.components",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED_OUT:
        import importlib

        return getattr(importlib.import_module(_MOVED_OUT[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
