"""Command-line options that several ``fedsim`` commands take, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a key: --set strategy.params.proximal_mu=0.1"),
]
ImportOption = Annotated[
    list[str] | None,
    typer.Option(
        "--import",
        help="Import this module first (its registered strategies, steps, models); "
        "added to the scenario's plugins, so every process imports it. Repeatable.",
        metavar="MODULE",
    ),
]
