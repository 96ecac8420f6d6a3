"""``fedsim validate FILE...``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from fedsim.cli.errors import USAGE_ERROR, report, stderr
from fedsim.cli.options import ImportOption, SetOption
from fedsim.compose import load_scenario
from fedsim.config.expand import expand
from fedsim.config.import_paths import scenario_imports
from fedsim.config.schema import NpzDataset, Scenario
from fedsim.config.sources import read_raw
from fedsim.errors import DataUnavailableError, Problem, ScenarioError


def _imports_line(
    path: Path, checked: bool, overrides: list[str], plugins: list[str]
) -> str | None:
    """``FILE: imports: strategy.name=pkg:Class`` (the code the file runs), if any."""
    try:  # the schema alone (no registry, no imports) is enough to find the names
        names = scenario_imports(Scenario.model_validate(read_raw(path, overrides, plugins)))
    except (ScenarioError, ValidationError):
        return None
    if not names:
        return None
    label = "imports" if checked else "imports (not imported, not checked)"
    return f"{path}: {label}: {', '.join(str(n) for n in names)}"


def _strict_problems(runs: list[Scenario]) -> list[Problem]:
    """What ``--strict`` adds: each run's split must give every class to some client."""
    from fedsim.data.federated import federated_data
    from fedsim.data.partitioners import coverage_problem

    problems = []
    for run in runs:
        data = federated_data(run.data, run.seed)
        problem = coverage_problem(run.data.partitioner, data.y, data.parts, run.seed)
        if problem is not None:
            prefix = f"variants.{run.variant}." if run.variant else ""
            problems.append(Problem(prefix + problem.key, problem.message))
    return problems


def check_data_files(runs: list[Scenario]) -> None:
    """Read the local data files the runs name (a bad file is an error of the scenario).

    Raises
    ------
    DataUnavailableError
        For the first file that cannot be used.
    """
    from fedsim.data.datasets import load_npz  # numpy and the loaders: only when needed

    seen: set[str] = set()
    for run in runs:
        dataset = run.data.dataset
        if isinstance(dataset, NpzDataset) and dataset.path not in seen:
            seen.add(dataset.path)
            load_npz(dataset)


def validate(
    files: Annotated[list[Path], typer.Argument(help="Scenario files to check.")],
    set_: SetOption = None,
    import_: ImportOption = None,
    no_imports: Annotated[
        bool,
        typer.Option(
            "--no-imports",
            help="Import no 'pkg.module:attr' name (for files you do not trust); list them.",
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="Also split the data: a class that reaches no client is an error."
        ),
    ] = False,
) -> None:
    """Check scenario files (every variant too) without running anything.

    Names of the form pkg.module:attr and plugins are code: they are listed, and
    imported and checked (the strategy and model built, without data or training)
    unless --no-imports.
    """
    failed = False
    overrides, plugins = set_ or [], import_ or []
    for path in files:
        imports = _imports_line(path, not no_imports, overrides, plugins)
        if imports:
            stderr.print(imports, soft_wrap=True, markup=False)
        try:
            scenario = load_scenario(path, overrides, imports=not no_imports, plugins=plugins)
            runs = expand(scenario, imports=not no_imports)
            check_data_files(runs)  # numbers only (no pickle): safe for untrusted files too
            # load_scenario composed every run: the strategy and model were built then.
            problems = _strict_problems(runs) if strict else []
            if problems:
                raise ScenarioError(problems, str(path))
        except (ScenarioError, DataUnavailableError) as exc:
            report(exc)
            failed = True
            continue
        plural = "s" if len(runs) != 1 else ""
        how = " without imports" if no_imports else ""
        stderr.print(f"{path}: ok{how} ({len(runs)} run{plural})", soft_wrap=True)
    if failed:
        raise typer.Exit(USAGE_ERROR)
