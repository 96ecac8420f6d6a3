"""The replies of a stacked chunk: what the ClientApp's train handler would send.

See :mod:`fedsim.client.stacked`; the metrics come in the handler's order
(:mod:`fedsim.client.app`), ``epsilon`` instead of ``train-loss`` under DP.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from torch import nn

from fedsim import wire
from fedsim.array_codec import row_array, row_arrays
from fedsim.client.dp import spend
from fedsim.client.stacked_training import ChunkResult, Result
from fedsim.client.steps import LocalStep, TrainResult
from fedsim.engine.flower_compat import plain_message, reply_message, timestamp
from fedsim.engine.telemetry import content_bytes
from fedsim.fast_records import filled
from fedsim.reply_chunk import ReplyChunk

if TYPE_CHECKING:
    from fedsim.client.stacked_jobs import StackedJob

_EMPTY_ARRAYS, _EMPTY_METRICS, _EMPTY_CONTENT = ArrayRecord(), MetricRecord(), RecordDict()


def custom_reply(
    model: nn.Module, step: LocalStep, client: StackedJob, result: Result, start: float
) -> Message | None:
    """The reply of a step with its own ``reply``: it sees the client's trained model.

    None if the step's reply raises: the ClientApp then runs the job and reports it
    (a shipped step writes ``context.state`` only once its reply is complete).
    """
    arrays, loss, samples, taken = result
    try:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.from_numpy(np.array(arrays[name])))  # the chunk's are read-only
        reply = step.reply(model, client.data, TrainResult(loss, samples, taken))
    except Exception:
        return None
    out = {
        k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        for k, v in reply.arrays.items()
    }
    # The stacked training's time shared out, plus this client's own reply work.
    return train_reply(client, out, reply.work, reply.metrics, time.perf_counter() - start)


def train_reply(
    client: StackedJob,
    arrays: Mapping[str, np.ndarray],
    work: TrainResult,
    step_metrics: Mapping[str, float],
    duration: float,
) -> Message:
    """The reply the ClientApp's train handler gives (see :mod:`fedsim.client.app`)."""
    encoded = {name: row_array(value) for name, value in arrays.items()}
    return _message(client, encoded, reply_values(client, work, step_metrics, duration))


def chunk_replies(
    chunk: list[StackedJob], result: ChunkResult, share: float
) -> tuple[list[Message | None], ReplyChunk]:
    """The plain replies of a stacked chunk (each client's time: ``share``), and as columns.

    Each reply is a :class:`ChunkReply`: its records are made when first read.
    """
    rows = [
        reply_values(c, TrainResult(loss, samples, taken), {}, share)
        for c, (loss, samples, taken) in zip(
            chunk, zip(result.mean_losses, result.samples, result.steps, strict=True), strict=True
        )
    ]
    contents = _ChunkContents(result.values, rows)
    current = timestamp()  # one chunk, made at one time
    replies = []
    for k, client in enumerate(chunk):
        reply = reply_message(_UNMADE, client.message, current, ChunkReply)
        reply.__dict__["_row"] = (contents, k)
        replies.append(reply)
    columns = {name: np.array([row[name] for row in rows]) for name in rows[0]}
    sent: list[Message | None] = list(replies)
    return sent, ReplyChunk(
        tuple(c.index for c in chunk),
        replies,
        dict(result.values),
        columns,
        content_bytes(replies[0]),
        rows,
    )


# The content of a reply not made yet (not None: the reply has content).
_UNMADE: Any = RecordDict()


class _ChunkContents:
    """What a chunk's replies carry: the stacked arrays and each row's metrics."""

    def __init__(self, values: Mapping[str, np.ndarray], rows: list[dict[str, Any]]) -> None:
        self.values, self.rows = values, rows

    def content(self, row: int) -> RecordDict:
        """Row ``row``'s records, as the ClientApp's train handler makes them."""
        arrays = {name: row_arrays(stack, (row,))[0] for name, stack in self.values.items()}
        return filled(
            _EMPTY_CONTENT,
            {
                wire.ARRAYS: filled(_EMPTY_ARRAYS, arrays),
                wire.METRICS: filled(_EMPTY_METRICS, self.rows[row]),
            },
        )


class ChunkReply(Message):
    """A stacked chunk's reply whose records are made when its content is first read.

    Its chunk's columns (:class:`~fedsim.reply_chunk.ReplyChunk`) hold what it carries:
    the in-process engine and fedsim's ``FedAvg`` read those, so a round's replies need
    no records unless a strategy reads them. Anything else sees a Flower ``Message``: its
    ``content`` is the records the ClientApp's train handler makes (arrays as rows of the
    chunk's, :func:`fedsim.array_codec.row_arrays`); a copy or a pickle is a plain one.
    """

    @property  # Message's property, its records made on first read
    def content(self) -> RecordDict:
        """The reply's records (made now if not made yet)."""
        fields = self.__dict__
        if fields["_content"] is _UNMADE:
            contents, row = fields.pop("_row")
            fields["_content"] = contents.content(row)
        content: RecordDict = fields["_content"]
        return content

    @content.setter
    def content(self, value: RecordDict) -> None:
        self.__dict__.pop("_row", None)
        Message.content.fset(self, value)  # type: ignore[attr-defined]

    def __reduce__(self) -> tuple[Any, ...]:
        return plain_message, (self.metadata, self.content)


def reply_values(
    client: StackedJob, work: TrainResult, step_metrics: Mapping[str, float], duration: float
) -> dict[str, Any]:
    """The metrics the ClientApp's train handler puts in its reply, in its order."""
    values: dict[str, Any] = {  # Python numbers, as the handler's
        wire.NUM_EXAMPLES: len(client.data.y)
        if work.num_examples is None
        else float(work.num_examples),
        wire.TRAIN_SAMPLES: int(work.samples),
        wire.DURATION_S: duration,
    }
    values.update(step_metrics)
    dp = client.scenario.client.dp
    if dp is None:
        values[wire.TRAIN_LOSS] = work.mean_loss
    else:  # the loss is a statistic of the private data: it stays on the device
        n = len(client.data.y)
        values[wire.EPSILON] = spend(
            client.context.state, dp, n, min(client.scenario.client.batch_size, n), work.steps
        )
    return values


def _message(
    client: StackedJob,
    arrays: Mapping[str, Array],
    values: dict[str, Any],
    current: float | None = None,
) -> Message:
    """The reply to ``client``'s message carrying ``arrays`` and the metrics ``values``.

    ``arrays`` are encoded already: row arrays (:func:`fedsim.array_codec.row_arrays`)
    that the in-process engine hands on to the server's strategy, which reads their
    values without parsing their bytes. ``current``: the reply's creation time.
    """
    metrics = filled(_EMPTY_METRICS, values)
    record = filled(_EMPTY_ARRAYS, arrays)
    content = filled(_EMPTY_CONTENT, {wire.ARRAYS: record, wire.METRICS: metrics})
    return reply_message(content, client.message, current)
