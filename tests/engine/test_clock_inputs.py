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
from fedsim.engine.reply_check import CLOCK_SLACK_S, MAX_NODE_EXAMPLES, ReplyRules, WorkBound
from fedsim.outputs.metrics_log import read_metrics
from tests.conftest import run_with_client_app
from tests.engine.test_reply_check import MODEL, NODE, _record, _reply, _sent


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


# ------------------------------------------------- Flower's grids (Ray, deployment)


class _Inner:
    """The part of Flower's grid that ``check_replies`` touches (none of it)."""


def _observed(
    partitions: dict[int, int] | None, work: WorkBound, per_parameter: tuple[str, ...] = ()
) -> ReplyRules:
    """The rules an ObservedGrid sets for partitions of 40 and 100 examples."""
    from fedsim.engine.observed_grid import ObservedGrid

    grid = ObservedGrid(_Inner(), simulated=partitions)  # type: ignore[arg-type]  # unused
    grid.check_replies(_record(MODEL), [40, 100], per_parameter, work)
    assert grid.reply_rules is not None
    return grid.reply_rules


def test_a_deployed_nodes_work_is_bounded_by_its_own_count_within_the_plausible() -> None:
    """The server cannot know a deployed node's data: its reply's num-examples stands
    for it, within MAX_NODE_EXAMPLES, and bounds the train-samples of its model reply."""
    rules = _observed(None, WorkBound(2, None, 8))  # 2 epochs in batches of 8
    sent = _sent()
    # 2 x (40 + 8) = 96 samples over the 40 examples it counts.
    assert rules.problem(sent, _reply(sent, num_examples=40, train_samples=96)) is None
    problem = rules.problem(sent, _reply(sent, num_examples=40, train_samples=97))
    assert problem is not None and "train-samples 97 exceeds the 96" in problem
    problem = rules.problem(sent, _reply(sent, num_examples=40, train_samples=1e300))
    assert problem is not None and "train-samples 1e+300 exceeds the 96" in problem
    # Counting more examples buys more work, up to the plausibility cap.
    big = MAX_NODE_EXAMPLES
    assert rules.problem(sent, _reply(sent, num_examples=big, train_samples=2 * big)) is None
    problem = rules.problem(sent, _reply(sent, num_examples=1e300, train_samples=1))
    assert problem is not None and f"num-examples 1e+300 exceeds the {big:g}" in problem


def test_a_deployed_reply_without_the_model_is_bounded_by_the_plausible_count() -> None:
    """AGC's replies count shared examples (fewer than they train on): the cap bounds them."""
    rules = _observed(None, WorkBound(1, None, 8), ("agc.grad.",))
    sent = _sent()
    gradient = {f"agc.grad.{k}": v for k, v in MODEL.items()}
    honest = _reply(sent, gradient, num_examples=10, train_samples=400)
    assert rules.problem(sent, honest) is None
    boast = _reply(sent, gradient, num_examples=10, train_samples=1e300)
    problem = rules.problem(sent, boast)
    assert problem is not None and f"exceeds the {MAX_NODE_EXAMPLES + 8:g}" in problem


def test_a_simulated_nodes_replies_are_bounded_by_its_partition() -> None:
    """On Ray the simulation names each node's partition: bounds as in-process."""
    rules = _observed({NODE: 0}, WorkBound(1, None, 8))  # NODE holds partition 0: 40
    sent = _sent()
    assert rules.problem(sent, _reply(sent, num_examples=40, train_samples=48)) is None
    problem = rules.problem(sent, _reply(sent, num_examples=41))
    assert problem is not None and "num-examples 41 exceeds the 40 examples" in problem
    problem = rules.problem(sent, _reply(sent, num_examples=12, train_samples=49))
    assert problem is not None and "train-samples 49 exceeds the 48" in problem
    # A node the simulation has not named yet holds at most the largest partition.
    unnamed = _observed({}, WorkBound(1, None, 8))
    assert unnamed.problem(sent, _reply(sent, num_examples=100, train_samples=108)) is None
    problem = unnamed.problem(sent, _reply(sent, num_examples=101))
    assert problem is not None and "exceeds the 100 examples" in problem
