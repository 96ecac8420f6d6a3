"""``fedsim run SCENARIO``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedsim.cli.errors import USAGE_ERROR, stderr, user_errors
from fedsim.cli.options import ImportOption, SetOption
from fedsim.cli.tables import table
from fedsim.compose import load_scenario
from fedsim.config.expand import expand
from fedsim.errors import RunDirectoryError
from fedsim.outputs.comparison import display
from fedsim.outputs.metrics_log import listening
from fedsim.outputs.progress import RoundProgress


def run(
    scenario_file: Annotated[
        Path | None, typer.Argument(help="Scenario YAML file.", metavar="[SCENARIO]")
    ] = None,
    set_: SetOption = None,
    import_: ImportOption = None,
    sweep: Annotated[
        list[str] | None,
        typer.Option(
            "--sweep",
            help="A grid axis: --sweep client.optimizer.lr=0.05,0.1 (repeatable; every "
            "combination of the axes becomes a variant).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run directory (default runs/<name>-<time>).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    resume_dir: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue the run in this directory from its last checkpoint "
            "(output.checkpoint_every); no SCENARIO then. --set may change only what a "
            "resumed run may (e.g. rounds=40 to run on).",
            metavar="RUN_DIR",
        ),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="Run this many of the variant x seed runs at once, each in its own "
            "process (results do not depend on it).",
        ),
    ] = 1,
) -> None:
    """Run a scenario (every variant x seed) and write its run directory."""
    # Imported on use: torch loads with the runner, and `fedsim deploy node` on a small
    # device should not pay for that just to start Flower.
    from fedsim.experiment import ExperimentResult, run_experiment
    from fedsim.runner import resume

    console = Console(soft_wrap=True)  # paths and summaries stay on one line each
    if (scenario_file is None) == (resume_dir is None):
        stderr.print("[bold red]error:[/] give a SCENARIO file or --resume RUN_DIR (not both)")
        raise typer.Exit(USAGE_ERROR)
    with user_errors():
        if resume_dir is not None:
            if out is not None or import_:
                raise RunDirectoryError(
                    "--resume continues a run as it was started: no --out, no --import"
                )
            with RoundProgress(None, enabled=not quiet) as bar, listening(bar.on_record):
                one = resume(resume_dir, set_ or [], progress=False)
            result = ExperimentResult(one.run_dir, [one])
        else:
            assert scenario_file is not None  # checked above
            scenario = load_scenario(
                scenario_file, set_ or [], sweeps=sweep or [], plugins=import_ or []
            )
            runs = expand(scenario)
            total = sum(r.rounds for r in runs)
            with RoundProgress(total, enabled=not quiet) as bar, listening(bar.on_record):
                result = run_experiment(
                    scenario, out, on_run_start=bar.run_started, progress=False, jobs=jobs
                )
    if len(result.runs) == 1:
        s = result.runs[0].summary
        # The ray engine has no virtual clock: its runs have no virtual time.
        vt = "-" if s["virtual_time_s"] is None else f"{s['virtual_time_s']:.1f} s"
        console.print(
            f"final accuracy {s['final_eval_accuracy']:.4f} (best {s['best_eval_accuracy']:.4f}), "
            f"virtual time {vt}, stragglers {s['stragglers']}, failures {s['failures']}",
            soft_wrap=True,  # one line whatever the terminal width (scripts grep it)
        )
    else:
        headers, cells = display(result.table)
        console.print(table("comparison", headers, cells))
    console.print(f"run directory: {result.out_dir}", soft_wrap=True)
