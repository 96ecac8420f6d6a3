"""Each tracker writes files that its own library reads back (no network)."""

from __future__ import annotations

import csv
import struct
from pathlib import Path
from typing import Any

import pytest

import fedsim
from fedsim.outputs.metrics_log import read_metrics


def test_csv_tracker_writes_one_row_per_round(tiny: dict[str, Any], tmp_path: Path) -> None:
    result = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "r")  # csv is the default
    with (result.run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    records = read_metrics(result.run_dir)
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    for row, record in zip(rows, records, strict=True):
        assert float(row["eval_accuracy"]) == pytest.approx(record["eval_accuracy"])
        assert int(row["bytes_up"]) == record["bytes_up"]
    assert rows[0]["train/train-loss"] == ""  # round 0 trained nothing
    assert float(rows[2]["train/train-loss"]) == pytest.approx(records[2]["train/train-loss"])


def _wandb_history(run_file: Path) -> list[dict[str, str]]:
    """History rows of an offline W&B run file, decoded with wandb's own protobuf schema.

    wandb 0.31 ships no Python reader for its ``.wandb`` log (its Go core reads it): the
    framing is LevelDB's log format (7-byte ``:W&B`` header, 32 KiB blocks, each chunk
    ``crc32 u32 | length u16 | type u8`` with types FULL=1, FIRST=2, MIDDLE=3, LAST=4),
    and every record is a ``wandb_internal_pb2.Record``.
    """
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
                )
    return rows


def test_tensorboard_wandb_and_mlflow_trackers_read_back(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_PROJECT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # nothing in the home directory
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    tiny["output"]["trackers"] = ["tensorboard", "wandb", "mlflow"]
    result = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "r")
    accuracy = [r["eval_accuracy"] for r in read_metrics(result.run_dir)]

    # TensorBoard: the event files, read by TensorBoard's own EventAccumulator.
    acc = event_accumulator.EventAccumulator(str(result.run_dir / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("eval_accuracy")
    assert [e.step for e in events] == [0, 1, 2]
    assert [e.value for e in events] == pytest.approx(accuracy, rel=1e-6)
    assert "train/train-loss" in acc.Tags()["scalars"]

    # MLflow: the file store in the run directory, read by MlflowClient.
    client = mlflow.MlflowClient(tracking_uri=f"file:{result.run_dir / 'mlruns'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    history = client.get_metric_history(run.info.run_id, "eval_accuracy")
    assert [m.step for m in history] == [0, 1, 2]
    assert [m.value for m in history] == pytest.approx(accuracy)
    assert run.data.params["client.optimizer.lr"] == "0.1"
    assert run.info.status == "FINISHED" and run.info.run_name == "seed3"

    # W&B offline: the run file under <run dir>/wandb.
    (run_file,) = (result.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    rows = _wandb_history(run_file)
    assert [int(r["_step"]) for r in rows] == [0, 1, 2]
    assert [float(r["eval_accuracy"]) for r in rows] == pytest.approx(accuracy)
