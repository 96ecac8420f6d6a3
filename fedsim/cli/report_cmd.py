"""``fedsim report RUN_DIR...``."""

from __future__ import annotations

import csv
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedsim.cli.errors import stderr, user_errors
from fedsim.cli.tables import table
from fedsim.outputs.comparison import display, format_cell
from fedsim.outputs.report import COLUMNS, write_report


class ImageFormat(StrEnum):
    """The image formats plots may be written in."""

    png = "png"
    svg = "svg"
    pdf = "pdf"


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
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric",
            help="A metrics.jsonl field to plot (repeatable; e.g. train_loss, "
            "client_accuracy_p10, fed-eval/eval-accuracy). Default: accuracy and loss.",
        ),
    ] = None,
    formats: Annotated[
        list[ImageFormat] | None, typer.Option("--format", help="Plot format (repeatable).")
    ] = None,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="Print the table as CSV (full precision), no plots list.")
    ] = False,
) -> None:
    """Overlay runs (accuracy and loss), print a comparison table, write plots and CSV."""
    with user_errors():
        bad = sorted(set(formats or []) - {"png", "svg", "pdf"})
        if bad:
            raise typer.BadParameter(f"--format {bad[0]}: choose png, svg or pdf")
        result = write_report(
            run_dirs,
            out,
            x=x.value,
            target=target,
            metrics=metric or (),
            formats=formats or ["png"],
        )
    for warning in result.warnings:
        stderr.print(f"[bold yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(result.rows)
        return
    console = Console()
    headers = [c.replace("_eval", "").replace("_", " ") for c in COLUMNS]
    cells = [[format_cell(row[c], c) for c in COLUMNS] for row in result.rows]
    console.print(table("runs", headers, cells))
    if any(row["runs"] > 1 for row in result.variants):
        # Runs that differ only in the seed, pooled: mean ± 95% CI (none from one seed).
        variant_headers, variant_cells = display(result.variants)
        console.print(table("variants (over their seeds)", variant_headers, variant_cells))
    if result.differences:
        names = [str(row["run"]) for row in result.rows]
        diff = [[key, *values] for key, values in result.differences]
        console.print(table("where the runs differ", ["key", *names], diff))
    elif len(result.rows) > 1:
        console.print("the runs' scenarios and provenance do not differ")
    for path in [result.csv_path, *result.variants_csv, *result.plots]:
        console.print(f"wrote {escape(str(path))}", soft_wrap=True)
