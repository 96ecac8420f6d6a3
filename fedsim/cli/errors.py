"""Turn fedsim's typed errors into one-line messages and exit code 2."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from fedsim.errors import FedsimError, ScenarioError

USAGE_ERROR = 2
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def report(exc: FedsimError) -> None:
    """Print an error as one line per problem (no traceback)."""
    lines = exc.lines() if isinstance(exc, ScenarioError) else [str(exc)]
    for line in lines:
        # soft_wrap: an error stays one line however narrow the terminal.
        stderr.print(f"[bold red]error:[/] {line}", markup=True, soft_wrap=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Exit with code 2 and a one-line message for every user mistake raised inside."""
    try:
        yield
    except FedsimError as exc:
        report(exc)
        raise typer.Exit(USAGE_ERROR) from None
