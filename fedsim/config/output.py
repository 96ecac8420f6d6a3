"""The ``output`` section: what a run writes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from fedsim.config.section import (
    Section,
)


class CallbackEntry(Section):
    """One ``output.callbacks`` entry with parameters: ``{name, params}``."""

    name: Annotated[str, Field(min_length=1)]
    params: dict[str, Any] = Field(default_factory=dict)


PlotFormat = Literal["png", "svg", "pdf"]


class OutputConfig(Section):
    """What a run writes."""

    dir: str | None = None
    # An existing run directory: false -> an error (or a numbered sibling for the default
    # runs/<name>-<time>), true -> its old run is removed and this run takes its place.
    overwrite: bool = False
    target_accuracy: Annotated[float, Field(gt=0, le=1)] | None = None
    evaluate_every: Annotated[int, Field(ge=1)] = 1
    plots: bool = True
    plot_formats: Annotated[list[PlotFormat], Field(min_length=1)] = Field(
        default_factory=lambda: list[PlotFormat](["png"])
    )
    checkpoint_every: Annotated[int, Field(ge=1)] | None = None
    # The global model on each client's own test split (natural partitions with test ids).
    per_client_eval: bool = False
    # Per-class recall of central evaluation (eval_recall, eval_recall_min per round).
    class_recall: bool = False
    # Post-hoc logit adjustment of central evaluation: logits - tau * log(global prior).
    eval_logit_adjust: Annotated[float, Field(ge=0)] | None = None
    # Experiment trackers (fedsim.outputs.trackers): csv, tensorboard, wandb, mlflow.
    trackers: list[str] = Field(default_factory=lambda: ["csv"])
    # Callbacks by registry name or pkg.module:Class, or {name, params}.
    callbacks: list[str | CallbackEntry] = Field(default_factory=list)
    # The variant every other variant is compared with (paired test over seeds).
    baseline: str | None = None
