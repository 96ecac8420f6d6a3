"""Whole runs where a fifth of the clients reply with garbage, lie, or hang.

Each bad reply must become a counted failure naming its node: the run finishes, the
global model stays finite and close to the clean run's, and nothing bad is averaged.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

import fedsim
from fedsim import wire
from fedsim.engine.inprocess_grid import InProcessGrid
from fedsim.outputs.metrics_log import read_metrics
from tests.conftest import run_with_client_app, strip_wall_clock

BAD_PARTITION = 0  # one client of five: 20%
Corrupt = Callable[[Message], None]


def _first_key(reply: Message) -> str:
    return next(iter(reply.content.array_records[wire.ARRAYS]))


def _set_array(reply: Message, value: np.ndarray) -> None:
    reply.content.array_records[wire.ARRAYS][_first_key(reply)] = Array(value)


def _num_examples(value: float) -> Corrupt:
    def corrupt(reply: Message) -> None:
        reply.content.metric_records[wire.METRICS][wire.NUM_EXAMPLES] = value

    return corrupt


def _first_array(reply: Message) -> np.ndarray:
    return reply.content.array_records[wire.ARRAYS][_first_key(reply)].numpy()


CORRUPTIONS: dict[str, Corrupt] = {
    "nan": lambda r: _set_array(r, np.full_like(_first_array(r), np.nan)),
    "inf": lambda r: _set_array(r, np.full_like(_first_array(r), np.inf)),
    "shape": lambda r: _set_array(r, _first_array(r).ravel()),
    "missing": lambda r: r.content.array_records[wire.ARRAYS].pop(_first_key(r)),
    "extra": lambda r: r.content.array_records[wire.ARRAYS].__setitem__(
        "extra", Array(np.ones(3, np.float32))
    ),
    "num-examples-1e12": _num_examples(1e12),
    "num-examples-negative": _num_examples(-50),
    "num-examples-zero": _num_examples(0),
    "num-examples-nan": _num_examples(math.nan),
}


def _scenario(tiny: dict[str, Any], **changes: Any) -> Any:
    tiny["data"]["num_clients"] = 5
    tiny["rounds"] = 3
    tiny.update(changes)
    return fedsim.load_scenario(tiny)


def _run(
    scenario: Any, client: Callable[[Message, Context], Message], run_dir: Path
) -> InProcessGrid:
    grid: InProcessGrid = run_with_client_app(scenario, client, run_dir)
    return grid


EXPECTED = {  # what the failure reason says for each corruption
    "nan": "non-finite values",
    "inf": "non-finite values",
    "shape": "has shape",
    "missing": "lacks model arrays",
    "extra": "unexpected array 'extra'",
    "num-examples-1e12": "num-examples 1e+12 exceeds",
    "num-examples-negative": "num-examples -50 is not positive",
    "num-examples-zero": "num-examples 0 is not positive",
    "num-examples-nan": "'num-examples' is not finite",
}


def _hostile(kinds: list[str]) -> Callable[[Message, Context], Message]:
    """The ClientApp, except that one node of five corrupts its reply of round r with kinds[r-1]."""
    from fedsim.client.app import app as client_app

    def client(msg: Message, ctx: Context) -> Message:
        reply = client_app(msg, ctx)
        round_ = int(msg.content.config_records[wire.CONFIG][wire.SERVER_ROUND])
        if int(ctx.node_config[wire.PARTITION_ID]) == BAD_PARTITION and not reply.has_error():
            CORRUPTIONS[kinds[round_ - 1]](reply)
        return reply

    return client


def _check_against_clean(
    tiny: dict[str, Any], strategy: str, kinds: list[str], tmp_path: Path
) -> InProcessGrid:
    """Run clean and hostile; the hostile run ends, finite and close, with one failure a round."""
    from fedsim.client.app import app as client_app

    scenario = _scenario(tiny, rounds=len(kinds), strategy={"name": strategy})
    _run(scenario, client_app, tmp_path / "clean")
    grid = _run(scenario, _hostile(kinds), tmp_path / "hostile")
    clean, hostile = read_metrics(tmp_path / "clean"), read_metrics(tmp_path / "hostile")
    assert [r["failures"] for r in hostile] == [0] + [1] * len(kinds)
    assert [r["participants"] for r in hostile] == [0] + [4] * len(kinds)
    reasons = grid.telemetry.failure_reasons
    assert len(reasons) == len(kinds)
    for kind, reason in zip(kinds, reasons, strict=True):
        assert reason.startswith("node 1000: reply refused: ") and EXPECTED[kind] in reason, kind
    final = np.load(tmp_path / "hostile" / "final_arrays.npz")
    assert all(np.isfinite(final[k]).all() for k in final.files)
    assert abs(hostile[-1]["eval_accuracy"] - clean[-1]["eval_accuracy"]) < 0.05
    return grid


def test_bad_replies_from_a_fifth_of_the_clients_are_counted_failures(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """One corruption per round (NaN, Inf, shape, missing, extra, four num-examples lies)."""
    _check_against_clean(tiny, "fedavg", list(CORRUPTIONS), tmp_path)


def test_fedmedian_is_not_poisoned_by_nan_replies(tiny: dict[str, Any], tmp_path: Path) -> None:
    _check_against_clean(tiny, "fedmedian", ["nan", "inf", "nan"], tmp_path)


def test_a_hung_client_is_abandoned_after_client_timeout_s(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """Node 1000 hangs in round 1 (until the test releases it); the run goes on without it."""
    from fedsim.client.app import app as client_app

    release = threading.Event()

    def client(msg: Message, ctx: Context) -> Message:
        round_ = int(msg.content.config_records[wire.CONFIG][wire.SERVER_ROUND])
        if int(ctx.node_config[wire.PARTITION_ID]) == BAD_PARTITION and round_ == 1:
            release.wait(60)  # "forever", as far as the run is concerned
        return client_app(msg, ctx)

    scenario = _scenario(tiny, engine={"client_timeout_s": 1.0})
    try:
        grid = _run(scenario, client, tmp_path / "run")
    finally:
        release.set()
    records = read_metrics(tmp_path / "run")
    assert [r["failures"] for r in records] == [0, 1, 0, 0]
    assert [r["participants"] for r in records] == [0, 4, 5, 5]
    assert grid.telemetry.failure_reasons == ["node 1000: CallTimeout: no reply within 1 s"]


def test_the_same_scenario_without_hangs_is_unchanged_by_the_watchdog(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """Running clients on the watchdog's thread gives the very same metrics."""
    from fedsim.client.app import app as client_app

    plain = _scenario(tiny)
    _run(plain, client_app, tmp_path / "a")
    watched = _scenario(tiny, engine={"client_timeout_s": 300.0})
    _run(watched, client_app, tmp_path / "b")
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert strip_wall_clock(a) == strip_wall_clock(b)


def test_a_non_finite_global_model_stops_the_run_naming_the_round() -> None:
    from fedsim.errors import DivergedError
    from fedsim.server.recorder import check_finite

    arrays = ArrayRecord({"w": Array(np.array([1.0, np.nan], np.float32))})
    with pytest.raises(
        DivergedError, match=r"^round 7: the global model has non-finite values in 'w'"
    ):
        check_finite(7, arrays)
    check_finite(7, ArrayRecord({"w": Array(np.ones(2, np.float32))}))


def test_a_nan_model_has_nan_metrics_not_the_share_of_class_zero() -> None:
    import torch

    from fedsim.evaluation import evaluate_model

    model = torch.nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.fill_(math.nan)
    x, y = np.ones((6, 2), np.float32), np.zeros(6, np.int64)  # argmax(NaN) = 0: "100%"
    loss, acc = evaluate_model(model, x, y)
    assert math.isnan(loss) and math.isnan(acc)


def test_telemetry_survives_a_nan_count() -> None:
    from fedsim.engine.flower_compat import set_task_identity
    from fedsim.engine.telemetry import Telemetry

    set_task_identity(1)
    sent = Message(RecordDict(), 1000, "train")
    sent.metadata.__dict__["_message_id"] = "m"
    metrics = MetricRecord({wire.NUM_EXAMPLES: math.nan, wire.TRAIN_LOSS: 0.5})
    telemetry = Telemetry()
    telemetry.record_delivery(Message(RecordDict({wire.METRICS: metrics}), reply_to=sent))
    assert telemetry.pop().train_loss is None
