"""``fedsim validate FILE...``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedsim.cli.errors import USAGE_ERROR, report, stderr
from fedsim.errors import ScenarioError
from fedsim.scenario_loading import expand, load_scenario


def validate(
    files: Annotated[list[Path], typer.Argument(help="Scenario files to check.")],
) -> None:
    """Check scenario files (every variant too) without running anything."""
    failed = False
    for path in files:
        try:
            runs = expand(load_scenario(path))
        except ScenarioError as exc:
            report(exc)
            failed = True
            continue
        stderr.print(f"{path}: ok ({len(runs)} run{'s' if len(runs) != 1 else ''})", soft_wrap=True)
    if failed:
        raise typer.Exit(USAGE_ERROR)
