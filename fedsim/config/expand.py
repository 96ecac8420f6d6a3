"""A scenario's concrete runs: variants x sweep points x seeds."""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from fedsim.config.schema import Scenario
from fedsim.config.sources import deep_merge, parse_mapping, set_dotted
from fedsim.errors import Problem, ScenarioError


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
    base = scenario.model_dump(mode="json", exclude={"variants", "seeds", "variant", "sweep"})
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
                    runs.append(parse_mapping(swept, imports=imports))
                except ScenarioError as exc:
                    prefix = f"variants.{vname}" if vname else ("sweep" if point else "")
                    raise (exc.with_prefix(prefix) if prefix else exc) from None
    return runs


def run_label(scenario: Scenario) -> str:
    """Return a directory-safe label ``variant-seedN`` (or ``seedN``) for one run."""
    return f"{scenario.variant}-seed{scenario.seed}" if scenario.variant else f"seed{scenario.seed}"
