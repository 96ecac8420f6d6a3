"""Turn fedsim's typed errors into one-line messages and exit code 2."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import typer
from rich.console import Console
from rich.markup import escape

from fedsim.errors import FedsimError, FedsimWarning, ScenarioError
from fedsim.failure_watch import TrainingStopped

USAGE_ERROR = 2
RUN_FAILED = 1
# emoji=False: ":x:" in a user's file (an /etc/passwd line) must not print as an emoji.
stderr = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
_python_showwarning = warnings.showwarning


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Print fedsim's warnings as one ``warning:`` line; others as Python would."""
    if issubclass(category, FedsimWarning):
        # User text (a path, a value) is escaped: `[/]` in it is text, not markup.
        stderr.print(
            f"[bold yellow]warning:[/] {escape(str(message))}", markup=True, soft_wrap=True
        )
        return
    _python_showwarning(message, category, filename, lineno, file, line)


def install_warning_printer() -> None:
    """Route :class:`~fedsim.errors.FedsimWarning` to :func:`show_warning`."""
    warnings.showwarning = show_warning


def report(exc: FedsimError) -> None:
    """Print an error as one line per problem (no traceback)."""
    lines = exc.lines() if isinstance(exc, ScenarioError) else [str(exc)]
    for line in lines:
        # soft_wrap: an error stays one line however narrow the terminal.
        # escape: a message quoting a file ("[/x]") is text, never rich markup.
        stderr.print(f"[bold red]error:[/] {escape(line)}", markup=True, soft_wrap=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Exit with code 2 and a one-line message for every user mistake raised inside."""
    try:
        yield
    except FedsimError as exc:
        report(exc)
        raise typer.Exit(USAGE_ERROR) from None
    except TrainingStopped as exc:  # the run went wrong, not its command line: exit 1
        stderr.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
        raise typer.Exit(RUN_FAILED) from None
