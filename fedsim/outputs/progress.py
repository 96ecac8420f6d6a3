"""A rich progress bar over all rounds of all runs of an experiment.

``fedsim run`` shows it in the terminal; the Python API shows it in a notebook (rich
renders it as a live widget there), fed by the records of ``metrics.jsonl``.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fedsim.config.expand import run_label
from fedsim.config.schema import Scenario


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython's ZMQ shell)."""
    import sys

    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


class RoundProgress:
    """Progress bar fed by ``metrics.jsonl`` records and run starts."""

    def __init__(self, total_rounds: int | None, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("acc {task.fields[acc]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            disable=not enabled,
        )
        self.task = self.progress.add_task("starting", total=total_rounds, acc="-")

    def __enter__(self) -> RoundProgress:
        self.progress.__enter__()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.__exit__(et, ev, tb)

    def run_started(self, index: int, total: int, scenario: Scenario) -> None:
        """Show which run is going."""
        label = scenario.name if total == 1 else f"{run_label(scenario)} ({index + 1}/{total})"
        self.progress.update(self.task, description=label)

    def on_record(self, record: dict[str, Any]) -> None:
        """Advance one round per record (round 0 is the initial evaluation)."""
        acc = record.get("eval_accuracy")
        advance = 1 if record.get("round", 0) > 0 else 0
        if acc is None:
            self.progress.update(self.task, advance=advance)
        else:
            self.progress.update(self.task, advance=advance, acc=f"{acc:.3f}")
