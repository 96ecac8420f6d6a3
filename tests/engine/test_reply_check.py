"""Replies are checked against the message they answer before any strategy sees them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedsim import wire
from fedsim.array_codec import encode
from fedsim.engine.flower_compat import assign_message_id, set_task_identity
from fedsim.engine.reply_check import REPLY_REJECTED, ReplyRules, agreeing, checked

MODEL = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)}
NODE = 1003


def _record(arrays: dict[str, Any]) -> ArrayRecord:
    record = ArrayRecord()
    for key, value in arrays.items():
        record[key] = encode(np.asarray(value))
    return record


def _sent(arrays: dict[str, Any] | None = None, kind: str = "train", n: int = 0) -> Message:
    set_task_identity(1)
    content = RecordDict({wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: 1})})
    content[wire.ARRAYS] = _record(MODEL if arrays is None else arrays)
    message = Message(content, NODE, kind)
    assign_message_id(message, f"m{n}")
    return message


def _reply(sent: Message, arrays: dict[str, Any] | None = None, **metrics: Any) -> Message:
    values = {wire.NUM_EXAMPLES: 40, wire.TRAIN_LOSS: 0.3, wire.TRAIN_SAMPLES: 40}
    values.update({k.replace("_", "-"): v for k, v in metrics.items()})
    content = RecordDict(
        {wire.METRICS: MetricRecord({k: v for k, v in values.items() if v is not None})}
    )
    content[wire.ARRAYS] = _record(
        {"w": np.ones((3, 2), np.float32), "b": np.ones(3, np.float32)}
        if arrays is None
        else arrays
    )
    return Message(content, reply_to=sent)


RULES = ReplyRules.for_model(
    _record(MODEL),
    node_examples=lambda node: 40.0,
    max_examples=400.0,
    per_parameter=("curv.F.", "curv.FT.", "agc.grad."),  # what those algorithms' specs declare
)


def _problem(
    reply_arrays: dict[str, Any] | None = None,
    sent_arrays: dict[str, Any] | None = None,
    **metrics: Any,
) -> str | None:
    sent = _sent(sent_arrays)
    return RULES.problem(sent, _reply(sent, reply_arrays, **metrics))


def test_a_plain_training_reply_passes() -> None:
    assert _problem() is None
    assert _problem(num_examples=12) is None  # fewer examples than the node holds: allowed
    float64 = {"w": np.ones((3, 2)), "b": np.ones(3)}
    assert _problem(float64) is None  # float64 replies are still the model


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        (
            {"w": np.full((3, 2), np.nan, np.float32), "b": np.ones(3, np.float32)},
            "'w' has non-finite",
        ),
        (
            {"w": np.ones((3, 2), np.float32), "b": np.array([1, np.inf, 1], np.float32)},
            "'b' has non-finite",
        ),
        (
            {"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)},
            "'w' has shape [2, 3], expected [3, 2]",
        ),
        ({"w": np.ones((3, 2), np.float32)}, "lacks model arrays ['b']"),
        ({**MODEL, "evil": np.ones(3, np.float32)}, "unexpected array 'evil'"),
        ({"w": np.array([["a", "b"]] * 3), "b": np.ones(3, np.float32)}, "non-numeric dtype"),
    ],
    ids=["nan", "inf", "shape", "missing", "extra", "strings"],
)
def test_bad_arrays_are_refused(arrays: dict[str, Any], expected: str) -> None:
    problem = _problem(arrays)
    assert problem is not None and expected in problem


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1e12, "exceeds the 40 examples"),
        (41, "exceeds the 40 examples"),
        (-50, "is not positive"),
        (0, "is not positive"),
        (math.nan, "'num-examples' is not finite"),
        (math.inf, "'num-examples' is not finite"),
        ([1, 2], "is a list"),
        (None, "num-examples is missing"),
    ],
)
def test_implausible_num_examples_are_refused(value: Any, expected: str) -> None:
    problem = _problem(num_examples=value)
    assert problem is not None and expected in problem


def test_non_finite_metrics_and_negative_work_are_refused() -> None:
    assert "'train-loss' is not finite" in (_problem(train_loss=math.nan) or "")
    assert "train-samples -5 is negative" in (_problem(train_samples=-5) or "")


def test_arrays_beside_the_model_follow_the_wire() -> None:
    """FedCurv sends sums and gets Fisher terms back; FedAwS withholds a matrix and sends a row."""
    curv_sent = {**MODEL, "curv.U.w": np.zeros((3, 2), np.float32)}
    fisher = {"curv.F.w": np.ones((3, 2), np.float32), "curv.FT.b": np.ones(3, np.float32)}
    assert _problem({**MODEL, **fisher}, curv_sent) is None
    assert "'curv.F.w' has shape [6]" in (
        _problem({**MODEL, "curv.F.w": np.ones(6, np.float32)}, curv_sent) or ""
    )
    aws_sent = {"b": MODEL["b"], "fedaws.row": np.zeros(2, np.float32)}
    assert (
        _problem({"b": np.ones(3, np.float32), "fedaws.row": np.ones(2, np.float32)}, aws_sent)
        is None
    )
    withheld = {**MODEL, "fedaws.row": np.ones(2, np.float32)}
    assert "not sent ['w']" in (_problem(withheld, aws_sent) or "")


def test_a_reply_that_is_not_the_model_is_bounded_by_the_federation() -> None:
    """AGC returns per-parameter gradients only; its count may include shared examples."""
    grads = {"agc.grad.w": np.ones((3, 2), np.float32), "agc.grad.b": np.ones(3, np.float32)}
    assert _problem(grads, num_examples=55.5) is None
    assert "exceeds the 400 examples" in (_problem(grads, num_examples=401) or "")


def test_a_worker_sent_nothing_to_merge_returns_the_whole_model() -> None:
    """An LASGD block with an empty offset: the reply must still be the full model."""
    assert _problem(sent_arrays={}) is None
    assert "lacks model arrays ['b']" in (_problem({"w": np.ones((3, 2), np.float32)}, {}) or "")


def test_evaluation_and_query_replies() -> None:
    sent = _sent(kind="evaluate")
    metrics = MetricRecord({wire.NUM_EXAMPLES: 40, wire.EVAL_ACCURACY: 0.5})
    assert RULES.problem(sent, Message(RecordDict({wire.METRICS: metrics}), reply_to=sent)) is None
    metrics[wire.NUM_EXAMPLES] = 400
    assert "exceeds the 40" in (
        RULES.problem(sent, Message(RecordDict({wire.METRICS: metrics}), reply_to=sent)) or ""
    )
    query = _sent({}, kind="query.labels")
    labels = MetricRecord({wire.LABELS: [0, 3]})
    assert RULES.problem(query, Message(RecordDict({wire.METRICS: labels}), reply_to=query)) is None


def test_a_refused_reply_is_an_error_naming_the_node() -> None:
    sent = _sent()
    out = checked(RULES, sent, _reply(sent, num_examples=-50))
    assert out.has_error() and out.error.code == REPLY_REJECTED
    assert out.error.reason.startswith(f"node {NODE}: reply refused: ")


def test_replies_whose_keys_differ_from_the_round_are_refused() -> None:
    sent = [_sent(n=i) for i in range(4)]
    replies = [_reply(m) for m in sent[:3]]
    replies.append(_reply(sent[3], num_examples=40, extra_metric=1.0))
    out = agreeing(replies, {m.metadata.message_id: m for m in sent})
    assert [r.has_error() for r in out] == [False, False, False, True]
    assert "keys differ" in out[3].error.reason
