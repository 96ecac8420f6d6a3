"""Client-reported numbers that drive the clock are bounded (issue #33, item 3).

``train-samples`` cannot exceed the work one local job can take on the examples the
node may count; ``duration-s`` cannot exceed the wall-clock time since the message was
sent, nor be negative.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message

import fedsim
from fedsim import wire
from fedsim.engine.reply_check import CLOCK_SLACK_S, ReplyRules, WorkBound
from fedsim.outputs.metrics_log import read_metrics
from tests.conftest import run_with_client_app
from tests.engine.test_reply_check import MODEL, _record, _reply, _sent


def test_work_bound_is_steps_or_epochs_over_the_examples() -> None:
    # 3 epochs of 40 examples in batches of 32: ceil(40/32) = 2 batches a pass, the
    # second short, so 120 samples; the bound allows a full last batch: 3 * (40 + 32).
    assert WorkBound(3, None, 32).samples(40) == 216
    assert WorkBound(3, 5, 32).samples(40) == 160  # local_steps: 5 batches of 32


RULES = ReplyRules.for_model(
    _record(MODEL), node_examples=lambda node: 40.0, max_examples=400.0, work=WorkBound(1, None, 8)
)


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"train_samples": 1e300}, "train-samples 1e+300 exceeds the 48"),
        ({"train_samples": 49}, "train-samples 49 exceeds the 48"),
        ({"duration_s": 1e308}, "duration-s 1e+308 is not within"),
        ({"duration_s": -1e308}, "duration-s -1e+308 is not within"),
    ],
)
def test_clock_inputs_past_their_bound_are_refused(metrics: dict[str, Any], expected: str) -> None:
    sent = _sent()
    problem = RULES.problem(sent, _reply(sent, **metrics))
    assert problem is not None and expected in problem, problem


def test_honest_clock_inputs_pass() -> None:
    sent = _sent()
    assert RULES.problem(sent, _reply(sent, train_samples=48, duration_s=0.0)) is None
    # A message sent 5 s ago may have taken 5 s of work, not 7.
    sent.metadata.__dict__["_created_at"] = time.time() - 5
    assert RULES.problem(sent, _reply(sent, duration_s=5.0)) is None
    assert RULES.problem(sent, _reply(sent, duration_s=5.0 + CLOCK_SLACK_S + 2)) is not None


def boasting_app(msg: Message, ctx: Context) -> Message:
    """fedsim's ClientApp, except that partition 0 claims 1e300 samples in round 1."""
    from fedsim.client.app import app as client_app

    reply = client_app(msg, ctx)
    round_ = int(msg.content.config_records[wire.CONFIG][wire.SERVER_ROUND])
    if int(ctx.node_config[wire.PARTITION_ID]) == 0 and round_ == 1 and not reply.has_error():
        reply.content.metric_records[wire.METRICS][wire.TRAIN_SAMPLES] = 1e300
        reply.content.metric_records[wire.METRICS][wire.DURATION_S] = 1e308
    return reply


def test_a_boasting_client_cannot_move_the_clock(tiny: dict[str, Any], tmp_path: Path) -> None:
    from fedsim.client.app import app as client_app

    scenario = fedsim.load_scenario(tiny)
    run_with_client_app(scenario, client_app, tmp_path / "clean")
    grid = run_with_client_app(scenario, boasting_app, tmp_path / "boast")
    clean, boast = read_metrics(tmp_path / "clean"), read_metrics(tmp_path / "boast")
    assert [r["failures"] for r in boast] == [0, 1, 0]
    assert "train-samples 1e+300 exceeds" in grid.telemetry.failure_reasons[0]
    # The refused reply costs no more simulated time than an honest one would have.
    assert boast[-1]["virtual_time_s"] <= clean[-1]["virtual_time_s"] + 1e-9
    assert all(abs(r.get("train/duration-s") or 0) < 1e3 for r in boast)
