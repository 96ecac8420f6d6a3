"""The reply checks of a stacked chunk, one array operation per rule and chunk.

:meth:`fedsim.engine.reply_check.ReplyRules.problem` checks one reply at a time; a
chunk's replies (:class:`fedsim.reply_chunk.ReplyChunk`) carry the same arrays and
metrics, so their checks can be done on the chunk's columns at once. Here each rule of
``problem`` is applied to every row; a row that passes them all passes ``problem``,
and a row that may not (or a chunk this cannot vouch for) is left to ``problem``
itself, so every reason a run reports is ``problem``'s own. The rules, their order and
their reasons stay in :mod:`fedsim.engine.reply_check`; this module only says which
rows certainly need none.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, Message
from numpy.typing import NDArray

from fedsim import wire
from fedsim.engine.reply_values import MAGNITUDE_CAP, NUMERIC_KINDS
from fedsim.engine.reply_work import CLOCK_SLACK_S
from fedsim.reply_chunk import ReplyChunk

if TYPE_CHECKING:
    from fedsim.engine.reply_check import ReplyRules

_NO_ARRAYS = ArrayRecord()


def rows_within_rules(
    rules: ReplyRules, sent: Sequence[Message], chunk: ReplyChunk
) -> NDArray[np.bool_]:
    """Which rows of ``chunk`` certainly break none of ``rules`` (``sent[r]``: row r's message).

    False rows may still be fine: they are checked one by one.
    """
    rows = len(sent)
    unsure = np.zeros(rows, dtype=bool)
    if not sent or not sent[0].has_content():
        return unsure
    first = sent[0]
    content = first.content
    if any(m.content is not content for m in sent):
        return unsure  # a round's messages share one content; others are checked singly
    ok = _arrays_within(rules, first, chunk)
    if ok is None:
        return unsure
    for values in chunk.metrics.values():
        if values.dtype.kind not in "iuf":
            return unsure
        ok &= np.isfinite(values)
    if not first.metadata.message_type.startswith("train"):
        return unsure
    return _counts_within(rules, sent, chunk, ok)


def _arrays_within(
    rules: ReplyRules, first: Message, chunk: ReplyChunk
) -> NDArray[np.bool_] | None:
    """Rows whose arrays keep the model's keys, shapes, types and magnitudes (None: unsure)."""
    view = rules.sent_view(first)
    if wire.ARRAYS not in view.allowed:
        return None
    expected, shapes = view.expected.get(wire.ARRAYS, (set(rules.model), {}))
    returned = {k for k in chunk.arrays if k in rules.model}
    if not returned or returned != expected:
        return None  # a reply without model arrays is bounded otherwise
    sent_arrays = view.records.get(wire.ARRAYS, _NO_ARRAYS)
    kinds = view.kinds.get(wire.ARRAYS, {})
    ok = np.ones(len(chunk.jobs), dtype=bool)
    for key, stack in chunk.arrays.items():
        shape = shapes.get(key) or rules.expected_shape(key, sent_arrays)
        dtype: np.dtype[Any] | None
        dtype, bound = kinds.get(key) or (rules.expected_dtype(key), MAGNITUDE_CAP)
        if shape is None or stack.dtype.kind not in NUMERIC_KINDS or stack.shape[1:] != shape:
            return None
        if dtype is not None and stack.dtype != dtype:
            return None  # a cast: problem() makes it
        if stack[0].size:
            # NaN and inf fail the comparison, as they fail problem()'s finiteness rule.
            ok &= np.abs(stack.reshape(len(stack), -1)).max(axis=1) <= bound
    return ok


def _counts_within(
    rules: ReplyRules, sent: Sequence[Message], chunk: ReplyChunk, ok: NDArray[np.bool_]
) -> NDArray[np.bool_]:
    """``ok`` and the rows whose ``num-examples``, ``train-samples``, ``duration-s`` fit."""
    examples = chunk.metrics.get(wire.NUM_EXAMPLES)
    if examples is None:
        return ok & False
    metadata = [m.metadata for m in sent]
    held = [rules.node_examples(meta.dst_node_id) for meta in metadata]
    if any(h is None for h in held):
        return ok & False  # a node whose examples the server cannot know
    bounds = np.array(held, dtype=np.float64)
    ok &= (examples > 0) & (examples <= bounds)
    samples = chunk.metrics.get(wire.TRAIN_SAMPLES)
    if samples is not None:
        work = rules.work
        sizes = bounds.tolist()
        by_size = {} if work is None else {h: work.samples(h) for h in set(sizes)}
        most = np.inf if work is None else np.array([by_size[h] for h in sizes])
        ok &= (samples >= 0) & (samples <= most)
    duration = chunk.metrics.get(wire.DURATION_S)
    if duration is not None:
        created = np.array([meta.created_at for meta in metadata])
        ok &= (duration >= 0) & (duration <= time.time() - created + CLOCK_SLACK_S)
    return ok
