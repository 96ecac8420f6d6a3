"""``fedsim report RUN_DIR...``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedsim.cli.errors import stderr, user_errors
from fedsim.outputs.comparison import format_cell
from fedsim.outputs.report import COLUMNS, write_report


class XAxis(StrEnum):
    """What the report's plots put on the x axis."""

    round = "round"
    virtual_time = "virtual_time"
    bytes_up = "bytes_up"


def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories to compare.")],
    x: Annotated[XAxis, typer.Option("--x", help="x axis of the plots.")] = XAxis.round,
    out: Annotated[Path, typer.Option("--out", help="Where report.csv and the PNGs go.")] = Path(
        "report"
    ),
    target: Annotated[
        float | None,
        typer.Option(help="Accuracy for 'to target' (default: each run's own target)."),
    ] = None,
) -> None:
    """Overlay runs (accuracy and loss), print a comparison table, write PNG and CSV."""
    with user_errors():
        result = write_report(run_dirs, out, x=x.value, target=target)
    for warning in result.warnings:
        stderr.print(f"[bold yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    table = Table(title="runs", show_header=True)
    # Run names are what the reader compares: never wrapped or cut; headers may wrap.
    width = max(len(str(row["run"])) for row in result.rows)
    table.add_column("run", no_wrap=True, min_width=width)
    for column in COLUMNS[1:]:
        table.add_column(column.replace("_eval", "").replace("_", " "))
    for row in result.rows:
        table.add_row(*(format_cell(row[c]) for c in COLUMNS))
    console = Console()
    console.print(table)
    for path in [result.csv_path, *result.plots]:
        console.print(f"wrote {path}")
