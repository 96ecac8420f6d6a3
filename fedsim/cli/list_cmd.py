"""``fedsim list strategies|steps|models|datasets|partitioners|engines|losses|...``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedsim.registry import import_object


class Kind(StrEnum):
    """The registries a scenario can name entries of."""

    strategies = "strategies"
    steps = "steps"
    models = "models"
    datasets = "datasets"
    partitioners = "partitioners"
    engines = "engines"
    distributions = "distributions"
    optimizers = "optimizers"
    losses = "losses"


# Where each registry lives; imported on demand so listing one kind stays light.
_REGISTRIES = {
    Kind.strategies: "fedsim.strategies:STRATEGIES",
    Kind.steps: "fedsim.client.app:STEPS",  # the app imports every shipped step
    Kind.models: "fedsim.models:MODELS",
    Kind.datasets: "fedsim.data.datasets:DATASETS",
    Kind.partitioners: "fedsim.data.partitioners:PARTITIONERS",
    Kind.engines: "fedsim.engine.registry:ENGINES",
    Kind.distributions: "fedsim.engine.devices:DISTRIBUTIONS",
    Kind.optimizers: "fedsim.client.optimizers:OPTIMIZERS",
    Kind.losses: "fedsim.client.losses:LOSSES",
}


def list_registry(
    kind: Annotated[Kind, typer.Argument(help="Which registry to print.")],
) -> None:
    """Print the names a scenario may use for one kind of component."""
    table = Table(title=kind.value, show_header=True)
    table.add_column("name", style="bold")
    table.add_column("description")
    registry: Any = import_object(_REGISTRIES[kind])
    for name, doc in registry.describe():
        # Descriptions are plain text: `uniform on [low, high]` is not rich markup.
        table.add_row(escape(name), escape(doc))
    Console().print(table)
