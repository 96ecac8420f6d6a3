"""``fedsim run SCENARIO``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedsim.cli.errors import user_errors
from fedsim.cli.progress import RoundProgress
from fedsim.outputs.comparison import markdown_table
from fedsim.outputs.metrics_log import listening
from fedsim.scenario_loading import expand, load_scenario


def run(
    scenario_file: Annotated[Path, typer.Argument(help="Scenario YAML file.", metavar="SCENARIO")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a key: --set strategy.params.proximal_mu=0.1"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run directory (default runs/<name>-<time>).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run a scenario (every variant x seed) and write its run directory."""
    # Imported on use: torch loads with the runner, and `fedsim deploy node` on a small
    # device should not pay for that just to start Flower.
    from fedsim.runner import run_experiment

    console = Console()
    with user_errors():
        scenario = load_scenario(scenario_file, set_ or [])
        runs = expand(scenario)
        total = sum(r.rounds for r in runs)
        with RoundProgress(total, enabled=not quiet) as bar, listening(bar.on_record):
            result = run_experiment(scenario, out, on_run_start=bar.run_started)
    if len(result.runs) == 1:
        s = result.runs[0].summary
        console.print(
            f"final accuracy {s['final_eval_accuracy']:.4f} (best {s['best_eval_accuracy']:.4f}), "
            f"virtual time {s['virtual_time_s']:.1f} s, stragglers {s['stragglers']}, "
            f"failures {s['failures']}"
        )
    else:
        console.print(markdown_table(result.table), markup=False, soft_wrap=True)
    console.print(f"run directory: {result.out_dir}")
