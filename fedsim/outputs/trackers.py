"""Experiment trackers (``output.trackers``): callbacks that copy each round's numbers.

- ``csv``: ``metrics.csv`` in the run directory, one row per round (always available).
- ``tensorboard``: event files under ``<run dir>/tensorboard`` (extra ``fedsim[tensorboard]``).
- ``wandb``: Weights & Biases, offline unless ``WANDB_MODE`` says otherwise; files under
  ``<run dir>/wandb`` (``wandb sync`` uploads them later; extra ``fedsim[wandb]``).
- ``mlflow``: MLflow's file store ``<run dir>/mlruns`` unless ``MLFLOW_TRACKING_URI``
  names another (extra ``fedsim[mlflow]``, which installs ``mlflow-skinny``).

Every tracker logs the record's numeric fields with the round as the step; nested
fields are flattened with ``/`` (``diagnostics/embedding_mean_cosine``), and the
strategy's own metrics keep their ``train/`` and ``fed-eval/`` prefixes.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fedsim.outputs.callbacks import TRACKERS, Callback, RunInfo
from fedsim.outputs.metrics_log import Record

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

CSV_FILE = "metrics.csv"


def scalars(record: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, int | float]]:
    """The record's numbers as ``(name, value)``, nested mappings flattened with ``/``."""
    for key, value in record.items():
        if isinstance(value, Mapping):
            yield from scalars(value, f"{prefix}{key}/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


class Tracker(Callback):
    """A callback that needs an optional library (``requires``: its import name)."""

    requires: ClassVar[str | None] = None
    extra: ClassVar[str | None] = None  # the pip extra that installs it


@TRACKERS.register("csv", help="metrics.csv: one row per round (no extra needed)")
class CsvTracker(Tracker):
    """``metrics.csv``: the rounds' numeric fields, one column each."""

    draws_random = False

    def __init__(self) -> None:
        self.rows: list[dict[str, int | float]] = []
        self.header: list[str] = []

    def _path(self, run: RunInfo) -> Path:
        return run.run_dir / CSV_FILE

    def _fields(self) -> list[str]:
        return ["round", *(c for c in self.header if c != "round")]

    def _write_all(self, path: Path) -> None:
        self.header = _columns(self.rows)
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self._fields())
            writer.writeheader()
            writer.writerows(self.rows)

    def on_round_end(  # noqa: D102
        self, run: RunInfo, server_round: int, record: Record, arrays: ArrayRecord
    ) -> None:
        row = dict(scalars(record))
        self.rows.append(row)
        path = self._path(run)
        if set(row) - set(self.header) or not path.exists():
            self._write_all(path)  # a new column: the header changes, write it again
            return
        with path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self._fields()).writerow(row)

    def on_run_end(self, run: RunInfo, records: Sequence[Record]) -> None:
        """Write the whole log once more (a resumed run's file holds every round)."""
        self.rows = [dict(scalars(r)) for r in records]
        self._write_all(self._path(run))


@TRACKERS.register("tensorboard", help="TensorBoard event files (fedsim[tensorboard])")
class TensorBoardTracker(Tracker):
    """Scalars in TensorBoard event files under ``<run dir>/tensorboard``."""

    requires = "tensorboard"
    extra = "tensorboard"

    def __init__(self) -> None:
        self.writer: Any = None

    def on_run_start(self, run: RunInfo) -> None:  # noqa: D102
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.run_dir / "tensorboard"))

    def on_round_end(  # noqa: D102
        self, run: RunInfo, server_round: int, record: Record, arrays: ArrayRecord
    ) -> None:
        for name, value in scalars(record):
            if name != "round":
                self.writer.add_scalar(name, value, global_step=server_round)

    def on_run_end(self, run: RunInfo, records: Sequence[Record]) -> None:  # noqa: D102
        self.writer.close()


def _params(run: RunInfo) -> dict[str, Any]:
    """The scenario as flat ``dotted.key: value`` pairs (trackers' run parameters)."""
    out: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        else:
            out[key] = value

    walk(run.scenario.model_dump(mode="json", exclude={"variants", "seeds"}), "")
    return out


def _run_name(run: RunInfo) -> str:
    from fedsim.config.expand import run_label

    return run_label(run.scenario)


@TRACKERS.register("wandb", help="Weights & Biases, offline by default (fedsim[wandb])")
class WandbTracker(Tracker):
    """A W&B run per fedsim run; offline files under ``<run dir>/wandb``."""

    requires = "wandb"
    extra = "wandb"

    def __init__(self) -> None:
        self.run: Any = None

    def on_run_start(self, run: RunInfo) -> None:  # noqa: D102
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", run.scenario.name),
            name=_run_name(run),
            group=run.scenario.name,
            dir=str(run.run_dir),
            mode=os.environ.get("WANDB_MODE", "offline"),  # type: ignore[arg-type]
            config=_params(run),
            reinit="create_new",
            # fedsim's own progress display owns the terminal.
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )

    def on_round_end(  # noqa: D102
        self, run: RunInfo, server_round: int, record: Record, arrays: ArrayRecord
    ) -> None:
        self.run.log(dict(scalars(record)), step=server_round)

    def on_run_end(self, run: RunInfo, records: Sequence[Record]) -> None:  # noqa: D102
        self.run.finish()


@TRACKERS.register("mlflow", help="MLflow, a file store in the run directory (fedsim[mlflow])")
class MlflowTracker(Tracker):
    """An MLflow run per fedsim run, in experiment ``<scenario name>``."""

    requires = "mlflow"
    extra = "mlflow"

    def __init__(self) -> None:
        self.client: Any = None
        self.run_id = ""

    def on_run_start(self, run: RunInfo) -> None:  # noqa: D102
        from mlflow import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"file:{(run.run_dir / 'mlruns').resolve()}"
        if uri.startswith("file:"):
            # MLflow 3 refuses its file store unless asked; a local file store is the
            # point here (no server, no database).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(run.scenario.name)
        exp_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(run.scenario.name)
        )
        self.run_id = self.client.create_run(exp_id, run_name=_run_name(run)).info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)[:500]) for k, v in _params(run).items()]  # MLflow's cap
        for start in range(0, len(params), 100):  # log_batch takes 100 params at most
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def on_round_end(  # noqa: D102
        self, run: RunInfo, server_round: int, record: Record, arrays: ArrayRecord
    ) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(name, float(value), now, server_round)
            for name, value in scalars(record)
            if name != "round"
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def on_run_end(self, run: RunInfo, records: Sequence[Record]) -> None:  # noqa: D102
        self.client.set_terminated(self.run_id)
