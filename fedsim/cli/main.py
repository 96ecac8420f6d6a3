"""The ``fedsim`` Typer application: wires the commands defined in their own modules."""

from __future__ import annotations

import logging
import os
import sys

import typer

from fedsim.cli.deploy_cmd import app as deploy_app
from fedsim.cli.errors import install_warning_printer
from fedsim.cli.list_cmd import list_registry
from fedsim.cli.report_cmd import report
from fedsim.cli.run_cmd import run
from fedsim.cli.supervisor import run_supervised, wants_supervisor
from fedsim.cli.validate_cmd import validate
from fedsim.config.plugins import cwd_on_path

app = typer.Typer(
    name="fedsim",
    help="Federated-learning simulation on Flower with a virtual clock.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts are plain text: a `[low, high]` in one is not rich markup to strip.
    rich_markup_mode=None,
)
app.command("run")(run)
app.command("validate")(validate)
app.command("list")(list_registry)
app.command("report")(report)
app.add_typer(deploy_app, name="deploy")


def _print_version(value: bool) -> None:
    if value:
        import fedsim

        typer.echo(f"fedsim {fedsim.__version__}")
        raise typer.Exit()


@app.callback()
def _configure(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Flower's own log."),
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print fedsim's version and exit.",
    ),
) -> None:
    """Federated-learning simulation on Flower with a virtual clock."""
    # Flower logs every round at INFO; fedsim's progress bar and files replace that.
    import flwr  # noqa: F401  (configures the 'flwr' logger, which we then adjust)

    from fedsim.flower_log import VERBOSE_ENV

    logging.getLogger("flwr").setLevel(logging.INFO if verbose else logging.ERROR)
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"  # the runs' flower_log reads it
    os.environ.setdefault("TQDM_DISABLE", "1")
    install_warning_printer()
    cwd_on_path()  # `fedsim run` from the folder holding mylab/ imports mylab.strat


def main() -> None:
    """Console-script entry point.

    ``fedsim run`` runs in a child process that this one supervises (Linux), so a
    client that kills the run process is named (:mod:`fedsim.cli.supervisor`).
    """
    if wants_supervisor(sys.argv[1:]):
        run_supervised(app)
    else:
        app()
