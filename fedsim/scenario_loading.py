"""Scenario files to validated :class:`~fedsim.scenario.Scenario` objects.

Reading YAML, ``--set key=value`` overrides, variant x seed expansion and the
conversion of every validation failure into :class:`~fedsim.errors.Problem` lines
that name the dotted key and the valid choices.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import json
import reprlib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fedsim import bounded_yaml
from fedsim.bounded_yaml import YamlBombError
from fedsim.errors import Problem, ScenarioError, UnknownNameError
from fedsim.param_types import param_type_problems
from fedsim.plugins import import_plugins
from fedsim.registry import choices_text, is_import_path, suggest
from fedsim.scenario import Scenario

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


# ----------------------------------------------------------- pydantic to Problems


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, dict[str, type[BaseModel]]]:
    """Return (model, {tag: member}) for a field annotation (plain model or tagged union)."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, {}
    members: dict[str, type[BaseModel]] = {}
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                for fname in ("name", "distribution"):
                    field = arg.model_fields.get(fname)
                    if field is not None and isinstance(field.default, str):
                        members[field.default] = arg
    return None, members


def _walk(loc: tuple[Any, ...]) -> tuple[list[str], type[BaseModel] | None]:
    """Drop discriminator tags from a pydantic location; return the model at its parent."""
    model: type[BaseModel] | None = Scenario
    path: list[str] = []
    i = 0
    parent: type[BaseModel] | None = Scenario
    while i < len(loc):
        part = loc[i]
        path.append(str(part))
        parent = model
        if model is None or str(part) not in model.model_fields:
            model = None
            i += 1
            continue
        nested, tagged = _model_in(model.model_fields[str(part)].annotation)
        if tagged and i + 1 < len(loc) and str(loc[i + 1]) in tagged:
            model = tagged[str(loc[i + 1])]
            i += 2
            continue
        model = nested
        i += 1
    return path, parent


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error line stays one short line."""
    text = reprlib.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def problems_from_validation(exc: ValidationError) -> list[Problem]:
    """Convert pydantic's errors into one :class:`Problem` per mistake."""
    problems: list[Problem] = []
    for err in exc.errors():
        path, parent = _walk(tuple(err["loc"]))
        key = ".".join(path)
        kind = err["type"]
        if kind == "extra_forbidden":
            valid = sorted(parent.model_fields) if parent is not None else []
            valid = [v for v in valid if v != "variant"]
            msg = f"unknown key{suggest(path[-1], valid)}; valid keys: {', '.join(valid)}"
        elif kind == "union_tag_invalid":
            ctx = err.get("ctx", {})
            tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
            discriminator = str(ctx.get("discriminator", "name")).strip("'")
            what = path[-1] if discriminator == "name" else discriminator
            msg = f"unknown {what}: " + choices_text(str(ctx.get("tag")), tags)
        elif kind == "union_tag_not_found":
            msg = f"missing key {err.get('ctx', {}).get('discriminator', 'name')}"
        elif kind == "literal_error":
            msg = f"{err['msg'].lower()}, got {_short(err.get('input'))}"
        else:
            msg = err["msg"]
            if kind not in ("missing",) and "input" in err and not isinstance(err["input"], dict):
                msg += f" (got {_short(err['input'])})"
        problems.append(Problem(key, msg))
    return problems


# ------------------------------------------------------------- component checks


def accepted_params(factory: Callable[..., Any], skip: Iterable[str] = ()) -> list[str] | None:
    """Keyword parameters ``factory`` accepts, or None if it takes any keyword.

    For a class, ``**kwargs`` forwarded to a base class (the usual way to extend a Flower
    strategy) is followed up the MRO, so the base's parameters count as accepted.
    """
    if inspect.isclass(factory):
        targets = [vars(c)["__init__"] for c in factory.__mro__ if "__init__" in vars(c)]
    else:
        targets = [factory]
    names: list[str] = []
    for target in targets:
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):
            return None
        names += [
            n
            for n, p in sig.parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in {"self", *skip}
        ]
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return names
    return None


def required_params(factory: Callable[..., Any], skip: Iterable[str] = ()) -> list[str]:
    """Parameters of ``factory`` (its ``__init__`` for a class) that have no default."""
    target = vars(factory).get("__init__", factory) if inspect.isclass(factory) else factory
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    return [
        n
        for n, p in sig.parameters.items()
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and n not in {"self", *skip}
    ]


def unknown_params(
    factory: Callable[..., Any], params: Mapping[str, Any], key: str, skip: Iterable[str] = ()
) -> list[Problem]:
    """Check ``params`` against ``factory``'s keyword parameters."""
    accepted = accepted_params(factory, skip)
    missing = [
        Problem(f"{key}.{name}", "required parameter is missing")
        for name in required_params(factory, skip)
        if name not in params
    ]
    if accepted is None:
        return missing
    return missing + [
        Problem(
            f"{key}.{name}",
            f"unknown key{suggest(name, accepted)}; valid keys: "
            f"{', '.join(sorted(set(accepted))) or '(none)'}",
        )
        for name in params
        if name not in accepted
    ]


def check_components(scenario: Scenario, *, imports: bool = True) -> list[Problem]:
    """Check the names and parameters that refer to registries.

    With ``imports=False`` a ``pkg.module:attr`` name is left unresolved (nothing is
    imported) and its parameters unchecked.
    """
    # Imported here: the registries pull in torch and flwr, which plain schema use avoids.
    from fedsim.engine.registry import ENGINES
    from fedsim.models import MODELS
    from fedsim.strategies import STRATEGIES

    problems: list[Problem] = []
    lookups: list[tuple[str, Any, str, Mapping[str, Any] | None, tuple[str, ...]]] = [
        ("strategy", STRATEGIES, scenario.strategy.name, scenario.strategy.params, ()),
        (
            "model",
            MODELS,
            scenario.model.name,
            scenario.model.params,
            ("input_shape", "num_classes"),
        ),
        ("engine", ENGINES, scenario.engine.name, None, ()),
    ]
    for section, registry, name, params, skip in lookups:
        if not imports and registry.importable is not None and is_import_path(name):
            continue
        try:
            component = registry.get(name)
        except UnknownNameError as exc:
            problems.append(exc.problem(f"{section}.name", section))
            continue
        if params is not None:
            unknown = unknown_params(component, params, f"{section}.params", skip=skip)
            problems += unknown or param_type_problems(component, params, f"{section}.params")
    problems += _inner_strategy_problems(scenario.strategy.params, "strategy.params.strategy")
    return problems


def _inner_strategy_problems(params: Mapping[str, Any], key: str) -> list[Problem]:
    """Check a wrapper's inner ``strategy: {name, params}`` (and its own inner one)."""
    from fedsim.strategies import STRATEGIES

    inner = params.get("strategy")
    if not isinstance(inner, Mapping):
        return []
    extra = sorted(set(inner) - {"name", "params"})
    if extra or not isinstance(inner.get("name"), str):
        return [Problem(key, "expected a mapping with 'name' (a strategy) and 'params'")]
    try:
        component = STRATEGIES.get(inner["name"])
    except UnknownNameError as exc:
        return [Problem(f"{key}.name", f"unknown strategy: {exc}")]
    inner_params = inner.get("params") or {}
    if not isinstance(inner_params, Mapping):
        return [Problem(f"{key}.params", "expected a mapping")]
    return unknown_params(component, inner_params, f"{key}.params") + _inner_strategy_problems(
        inner_params, f"{key}.params.strategy"
    )


# Flower strategy parameters that make a round wait until so many nodes exist; the
# evaluation count matters only when federated evaluation runs (fraction_evaluate > 0).
NODE_MINIMUMS = ("min_available_nodes", "min_train_nodes")
EVALUATE_MINIMUM = "min_evaluate_nodes"


def param_defaults(cls: type) -> dict[str, Any]:
    """Default values of ``cls``'s keyword parameters, following ``**kwargs`` up the MRO."""
    defaults: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = vars(klass).get("__init__")
        try:
            sig = inspect.signature(init) if init is not None else None
        except (TypeError, ValueError):
            sig = None
        if sig is not None:
            defaults.update(
                (n, p.default) for n, p in sig.parameters.items() if p.default is not p.empty
            )
    return defaults


def check_population(scenario: Scenario) -> list[Problem]:
    """Refuse strategy node minimums the population can never meet (a run would wait forever)."""
    from fedsim.strategies import STRATEGIES

    try:
        cls = STRATEGIES.get(scenario.strategy.name)
    except UnknownNameError:
        return []  # reported by check_components
    if not inspect.isclass(cls):
        return []
    given = scenario.strategy.params
    # fedsim's own defaults (fedsim.server.strategy_defaults): the whole population, no
    # federated evaluation; then the strategy's, then what the scenario sets.
    values = {**param_defaults(cls), "min_available_nodes": scenario.data.num_clients}
    values["fraction_evaluate"] = 0.0
    values.update(given)
    names = list(NODE_MINIMUMS)
    fraction = values.get("fraction_evaluate")
    if isinstance(fraction, int | float) and fraction > 0:
        names.append(EVALUATE_MINIMUM)
    n = scenario.data.num_clients
    problems: list[Problem] = []
    for name in names:
        need = values.get(name)
        if not isinstance(need, int) or need <= n:
            continue
        text = f"{need} nodes needed but data.num_clients is {n}: the run would wait forever"
        if name in given:
            problems.append(Problem(f"strategy.params.{name}", text))
        else:
            problems.append(
                Problem(
                    "data.num_clients",
                    f"strategy '{scenario.strategy.name}' needs at least {need} nodes "
                    f"({name}={need}); raise data.num_clients or set "
                    f"strategy.params.{name}",
                )
            )
    return problems


def raw_name_problems(raw: Mapping[str, Any], *, imports: bool = True) -> list[Problem]:
    """Unknown strategy and model names of a mapping that failed the schema.

    The plugins it lists are imported first (with ``imports``), as for a valid one.
    """
    from fedsim.models import MODELS
    from fedsim.strategies import STRATEGIES

    problems: list[Problem] = []
    plugins = raw.get("plugins")
    if imports and isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):
        try:
            import_plugins(plugins)
        except ScenarioError as exc:
            problems += exc.problems
    for section, registry in (("strategy", STRATEGIES), ("model", MODELS)):
        value = raw.get(section)
        name = value.get("name") if isinstance(value, Mapping) else None
        if not isinstance(name, str) or (not imports and is_import_path(name)):
            continue
        try:
            registry.get(name)
        except UnknownNameError as exc:
            problems.append(exc.problem(f"{section}.name", section))
    return problems


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
    from fedsim.combinations import check_combinations
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
        :mod:`fedsim.import_paths`).
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
        expand(scenario, imports=imports)  # a variant breaking the schema: the file is wrong
    except ScenarioError as exc:
        raise (exc.with_source(label) if label and exc.source is None else exc) from None
    return scenario


def sweep_grid(sweep: Mapping[str, Sequence[Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every combination of a ``sweep`` as ``(label, {dotted key: value})``, in order.

    The label names each key by its last part: ``{"strategy.params.proximal_mu": [0,
    0.1], "client.optimizer.lr": [0.05]}`` gives ``proximal_mu-0_lr-0.05`` and
    ``proximal_mu-0.1_lr-0.05``.
    """
    keys = list(sweep)
    grid = []
    for values in itertools.product(*(sweep[k] for k in keys)):
        label = "_".join(
            f"{k.rsplit('.', 1)[-1]}-{_label_text(v)}" for k, v in zip(keys, values, strict=True)
        )
        grid.append((label, dict(zip(keys, values, strict=True))))
    return grid


def _label_text(value: Any) -> str:
    """A sweep value as directory-safe text."""
    text = value if isinstance(value, str) else json.dumps(value)
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)


def expand(scenario: Scenario, *, imports: bool = True) -> list[Scenario]:
    """Return one concrete scenario per variant x sweep point x seed, in declaration order."""
    base = scenario.model_dump(
        mode="json", exclude={"variants", "seeds", "variant", "sweep", "tuning"}
    )
    seeds = scenario.seeds or [scenario.seed]
    variants: dict[str, dict[str, Any]] = scenario.variants or {"": {}}
    grid = sweep_grid(scenario.sweep) if scenario.sweep else [("", {})]
    runs: list[Scenario] = []
    for vname, override in variants.items():
        try:
            merged = deep_merge(base, override)
        except ScenarioError as exc:
            raise exc.with_prefix(f"variants.{vname}") from None
        if {"variants", "seeds", "sweep"} & set(override):
            raise ScenarioError(
                [Problem(f"variants.{vname}", "a variant cannot nest variants/seeds/sweep")]
            )
        for point, settings in grid:
            swept = copy.deepcopy(merged)
            for key, value in settings.items():
                try:
                    set_dotted(swept, key, copy.deepcopy(value))
                except ScenarioError as exc:
                    raise exc.with_prefix(f"sweep.{key}") from None
            label = "_".join(part for part in (vname, point) if part) or None
            for seed in seeds:
                swept["seed"] = seed
                swept["variant"] = label
                try:
                    runs.append(validate_mapping(swept, imports=imports))
                except ScenarioError as exc:
                    prefix = f"variants.{vname}" if vname else ("sweep" if point else "")
                    raise (exc.with_prefix(prefix) if prefix else exc) from None
    return runs


def run_label(scenario: Scenario) -> str:
    """Return a directory-safe label ``variant-seedN`` (or ``seedN``) for one run."""
    return f"{scenario.variant}-seed{scenario.seed}" if scenario.variant else f"seed{scenario.seed}"


def to_yaml(scenario: Scenario) -> str:
    """Serialise a scenario as YAML that :func:`load_scenario` reads back identically."""
    data = scenario.model_dump(mode="json", exclude_none=False)
    return yaml.safe_dump(data, sort_keys=False)
