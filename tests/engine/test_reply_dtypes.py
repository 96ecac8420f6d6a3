"""A reply never sets the global model's number type (issue #33, item 2).

float16 is widened and float64 rounded to the model's float32; bool and uint8 are
refused; int64 values of 2^62 are refused as implausible (far past
``MAGNITUDE_FACTOR`` times what was sent). The same :class:`ReplyRules` serve the
in-process grid (here with 0 and 2 workers) and the ObservedGrid that wraps Flower's
grid on Ray and in deployment (checked here with a stand-in for Flower's grid).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, Context, Message

import fedsim
from fedsim import wire
from fedsim.engine.observed_grid import ObservedGrid
from fedsim.engine.reply_check import MAGNITUDE_FACTOR, checked
from fedsim.outputs.metrics_log import read_metrics
from tests.conftest import run_with_client_app
from tests.engine.test_observed_grid import _Replying
from tests.engine.test_reply_check import MODEL, RULES, _record, _reply, _sent

ONES = {"w": np.ones((3, 2), np.float32), "b": np.ones(3, np.float32)}


def _as(dtype: Any, value: float = 1.0) -> dict[str, np.ndarray]:
    return {k: np.full(v.shape, value).astype(dtype) for k, v in ONES.items()}


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int8, np.int32])
def test_a_reply_in_another_number_type_is_cast_to_the_models(dtype: Any) -> None:
    sent = _sent()
    reply = checked(RULES, sent, _reply(sent, _as(dtype, 3)))
    assert not reply.has_error()
    arrays = reply.content.array_records[wire.ARRAYS]
    assert {k: a.numpy().dtype for k, a in arrays.items()} == {"w": np.float32, "b": np.float32}
    assert all((a.numpy() == 3).all() for a in arrays.values())


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        (_as(np.uint8), "has dtype uint8, expected float32"),
        (_as(np.bool_), "has dtype bool, expected float32"),
        (_as(np.int64, 2.0**62), "implausibly far from what it was sent"),
        (_as(np.float32, 1e30), "implausibly far from what it was sent"),
        # Integers past 2^24 are not exact in float32, even below the magnitude bound.
        (_as(np.int64, 2**24 + 1), "has dtype int64, expected float32"),
    ],
    ids=["uint8", "bool", "int64-2^62", "float-1e30", "int-inexact"],
)
def test_a_reply_that_would_change_the_model_is_refused(
    arrays: dict[str, np.ndarray], expected: str
) -> None:
    sent = _sent({k: np.full_like(v, 100.0) for k, v in MODEL.items()})
    # 2^24 + 1 is below 100 * 1e6: refused for its type, not its size.
    reply = checked(RULES, sent, _reply(sent, arrays))
    assert reply.has_error() and expected in reply.error.reason, reply.error.reason


def test_the_magnitude_bound_is_relative_to_what_was_sent() -> None:
    sent = _sent({k: np.full_like(v, 2.0) for k, v in MODEL.items()})
    assert RULES.problem(sent, _reply(sent, _as(np.float32, 1.9 * MAGNITUDE_FACTOR))) is None
    problem = RULES.problem(sent, _reply(sent, _as(np.float32, 2.1 * MAGNITUDE_FACTOR)))
    assert problem is not None and "implausibly far" in problem


class _HalfPrecision(_Replying):
    """Flower's grid stand-in whose node 10 replies in float16."""

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        replies = super().send_and_receive(messages, timeout=timeout)
        for reply in replies:
            if not reply.has_error():
                record = reply.content.array_records[wire.ARRAYS]
                for key in list(record):
                    record[key] = Array(record[key].numpy().astype(np.float16))
        return replies


def test_ray_and_deployment_replies_are_cast_by_the_same_rules() -> None:
    grid = ObservedGrid(_HalfPrecision())
    grid.check_replies(_record({"0": np.zeros(8, np.float32)}), [])
    sent = _sent({"0": np.zeros(8, np.float32)})
    sent.metadata.__dict__["_dst_node_id"] = 10  # the stand-in's training node
    replies = list(grid.send_and_receive([sent]))
    assert not replies[0].has_error(), replies[0].error
    arrays = replies[0].content.array_records[wire.ARRAYS]
    assert arrays["0"].numpy().dtype == np.float32


# --------------------------------------------------------------- whole runs

KINDS = ["float16", "uint8", "bool", "int64-2^62"]  # node 1000's reply, by round
REFUSED = {"uint8": "dtype uint8", "bool": "dtype bool", "int64-2^62": "implausibly far"}


def retyping_app(msg: Message, ctx: Context) -> Message:
    """fedsim's ClientApp, except that partition 0 retypes its reply (module level: workers)."""
    from fedsim.client.app import app as client_app

    reply = client_app(msg, ctx)
    round_ = int(msg.content.config_records[wire.CONFIG][wire.SERVER_ROUND])
    if int(ctx.node_config[wire.PARTITION_ID]) != 0 or reply.has_error():
        return reply
    kind = KINDS[round_ - 1]
    record = reply.content.array_records[wire.ARRAYS]
    retype: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "float16": lambda a: a.astype(np.float16),
        "uint8": lambda a: (a * 100).astype(np.uint8),
        "bool": lambda a: a > 0,
        "int64-2^62": lambda a: np.full(a.shape, 2**62, np.int64),
    }
    for key in list(record):
        record[key] = Array(retype[kind](record[key].numpy()))
    return reply


@pytest.mark.parametrize("workers", [0, 2])
def test_retyped_replies_never_change_the_global_models_type(
    tiny: dict[str, Any], tmp_path: Path, workers: int
) -> None:
    tiny["rounds"] = len(KINDS)
    tiny["data"]["num_clients"] = 5
    if workers:
        tiny["engine"] = {"workers": workers}
    grid = run_with_client_app(fedsim.load_scenario(tiny), retyping_app, tmp_path / "run")
    try:
        records = read_metrics(tmp_path / "run")
        reasons = list(grid.telemetry.failure_reasons)
    finally:
        close = getattr(grid, "close", None)
        if close is not None:
            close()
    # float16 is widened and averaged; the other three are refused, one failure each.
    assert [r["failures"] for r in records] == [0, 0, 1, 1, 1]
    assert len(reasons) == 3
    for kind, reason in zip(KINDS[1:], reasons, strict=True):
        assert reason.startswith("node 1000: reply refused: ") and REFUSED[kind] in reason
    # The model sent down keeps its size every round (float16 would halve it).
    assert len({r["bytes_down"] for r in records[1:]}) == 1
    final = np.load(tmp_path / "run" / "final_arrays.npz")
    assert all(final[k].dtype == np.float32 for k in final.files)
    assert all(np.isfinite(final[k]).all() and np.abs(final[k]).max() < 100 for k in final.files)
