"""Replies checked before any strategy sees them.

A client can reply with anything: NaN weights, an array of the wrong shape, one array
too few or too many, or a ``num-examples`` that lets it own the average. Strategies
(Flower's among them) trust what they are handed, so the engine checks every reply
against the message it answers and turns a bad one into an error reply: the strategy
skips it like any failed client, and the telemetry counts it as a failure whose reason
names the node. Nothing here knows a strategy; the rules are the wire's:

- every array decodes, is numeric and finite;
- an array keeps the type of the array it answers (the model's, or the one sent): a
  narrower float (float16) or integer is cast up, a wider float cast down; bool and
  unsigned bytes are refused, and integers into a float array are accepted only where
  they are exact in it;
- every value's magnitude is plausible: at most :data:`MAGNITUDE_FACTOR` times the
  largest magnitude of the array it answers (at least 1), and never above
  :data:`MAGNITUDE_CAP` (an array with no sent counterpart has that cap only), so one
  reply of 2^62 cannot make the average meaningless;
- an array the server sent comes back with the shape it was sent with; a model array
  with the model's shape; a per-parameter array (a prefix in the algorithm's spec:
  FedCurv's Fisher terms, AGC's gradient) with the shape of the parameter it names;
  any other array is unexpected;
- a reply that carries model arrays carries exactly the model arrays it was sent (all
  of the model when it was sent none: an LASGD worker with nothing to merge), so a
  step that returns something other than the model (AGC) is free to;
- array records only under names the server used;
- every metric is finite; a train or evaluate reply has one ``num-examples``, positive
  and at most the examples the node holds (in simulation the engine knows them; a
  reply without model arrays, such as AGC's, may count shared examples too, so it is
  bounded by the whole federation); where the server cannot know them (a deployed
  node), at most :data:`MAX_NODE_EXAMPLES`;
- the numbers that drive the virtual clock are what the node could have done: a train
  reply's ``train-samples`` at most the work :class:`WorkBound` allows on the examples
  it may count (``local_steps x batch_size``, or ``local_epochs x (examples +
  batch_size)``; for a deployed node's model reply, the examples are its own
  ``num-examples``), and ``duration-s`` between 0 and the wall-clock seconds since the
  message was created (plus :data:`CLOCK_SLACK_S`).

:func:`agreeing` adds the round-level rule Flower's aggregation assumes (all replies
carry the same keys): replies whose keys differ from the round's majority are refused
instead of aborting the aggregation.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord
from numpy.typing import NDArray

from fedsim import wire
from fedsim.array_codec import encode, view
from fedsim.engine.chunk_check import rows_within_rules
from fedsim.engine.reply_values import (
    MAGNITUDE_CAP,
    MAGNITUDE_FACTOR,
    NUMERIC_KINDS,
    cast_problem,
    sent_kinds,
)
from fedsim.engine.reply_work import CLOCK_SLACK_S, MAX_NODE_EXAMPLES, WorkBound, work_problem
from fedsim.reply_chunk import ReplyChunk
from fedsim.rounding import decode_rounded, is_rounded

# Re-exported: the engines and tests name them through this module.
__all__ = [
    "CLOCK_SLACK_S",
    "MAGNITUDE_CAP",
    "MAGNITUDE_FACTOR",
    "MAX_NODE_EXAMPLES",
    "REPLY_REJECTED",
    "ReplyRules",
    "WorkBound",
    "agreeing",
    "checked",
    "rejected",
]

# fedsim's own error code for a refused reply (flwr.common.constant.ErrorCode ends at 8).
REPLY_REJECTED = 100


def _unknown(_node: int) -> float | None:
    return None


_NO_ARRAYS = ArrayRecord()


@dataclass(frozen=True)
class SentView:
    """What one sent content allows a reply to carry."""

    records: dict[str, ArrayRecord]  # the array records sent, by name
    allowed: set[str]  # array record names a reply may use
    # Per sent record: the model arrays a reply must return, and each sent array's shape.
    expected: dict[str, tuple[set[str], dict[str, tuple[int, ...]]]]
    # Per sent record: each sent array's dtype and the magnitude bound of a reply to it.
    kinds: dict[str, dict[str, tuple[np.dtype[Any], float]]]


@dataclass(frozen=True)
class ReplyRules:
    """What a valid reply may contain.

    Parameters
    ----------
    model : mapping of str to shape
        The global model's arrays (name -> shape).
    node_examples : callable, optional
        Node id -> the number of examples the node holds, or None where the server
        cannot know it (a deployed node): its reply's ``num-examples`` is then bounded
        by ``max_examples`` only, and bounds the work of its model replies itself.
    max_examples : float
        Upper bound on any reply's ``num-examples`` (the whole federation's examples,
        or :data:`MAX_NODE_EXAMPLES` where they are unknown).
    """

    model: Mapping[str, tuple[int, ...]]
    node_examples: Callable[[int], float | None] = _unknown
    max_examples: float = MAX_NODE_EXAMPLES
    # Reply array prefixes that stand for one model parameter each (the algorithms'
    # specs say which: FedCurv's "curv.F.", AGC's "agc.grad.").
    per_parameter: tuple[str, ...] = ()
    dtypes: Mapping[str, np.dtype[Any]] = field(default_factory=dict)
    work: WorkBound | None = None  # None: train-samples only has to be non-negative
    # What a sent content allows, by the content's id (the content kept alive beside
    # it): a round's messages share one content, so it is worked out once per round.
    _sent_views: dict[int, tuple[object, SentView]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @classmethod
    def for_model(
        cls,
        arrays: ArrayRecord,
        node_examples: Callable[[int], float | None] = _unknown,
        max_examples: float = MAX_NODE_EXAMPLES,
        per_parameter: Sequence[str] = (),
        work: WorkBound | None = None,
    ) -> ReplyRules:
        """Rules for replies to a run whose global model is ``arrays``."""
        return cls(
            {k: tuple(int(d) for d in v.shape) for k, v in arrays.items()},
            node_examples,
            max_examples,
            tuple(per_parameter),
            {k: np.dtype(v.dtype) for k, v in arrays.items()},
            work,
        )

    def problem(self, sent: Message, reply: Message) -> str | None:
        """Return what is wrong with ``reply`` to ``sent`` (None if nothing is)."""
        if reply.has_error() or not reply.has_content():
            return None
        # One pass over the records: RecordDict's typed views build new records per call.
        arrays: dict[str, ArrayRecord] = {}
        metrics: dict[str, MetricRecord] = {}
        for name, record in reply.content.items():
            if isinstance(record, ArrayRecord):
                arrays[name] = record
            elif isinstance(record, MetricRecord):
                metrics[name] = record
        carries_model, problem = self._arrays_problem(sent, arrays)
        return problem or self._metrics_problem(sent, metrics, carries_model)

    def chunk_problems(self, sent: Sequence[Message], chunk: ReplyChunk) -> list[str | None]:
        """:meth:`problem` of each row of ``chunk`` (``sent[r]``: what row ``r`` answers).

        The chunk's columns are checked at once (:mod:`fedsim.engine.chunk_check`); only
        rows that may break a rule are checked one by one, by :meth:`problem`.
        """
        passing = rows_within_rules(self, sent, chunk)
        return [
            None if ok else self.problem(message, reply)
            for ok, message, reply in zip(passing.tolist(), sent, chunk.replies, strict=True)
        ]

    # ------------------------------------------------------------------ arrays

    def new_dispatch(self) -> None:
        """Forget what earlier sent contents allowed (a strategy may reuse and change one)."""
        self._sent_views.clear()

    def sent_view(self, sent: Message) -> SentView:
        """The array records ``sent`` carried and the shapes a reply may return."""
        content = sent.content if sent.has_content() else None
        key = id(content)
        cached = self._sent_views.get(key)
        if cached is not None and cached[0] is content:
            return cached[1]
        records = {
            name: record
            for name, record in (content.items() if content is not None else ())
            if isinstance(record, ArrayRecord)
        }
        view_ = SentView(
            records,
            set(records) or {wire.ARRAYS},
            {
                name: (
                    {k for k in record if k in self.model} or set(self.model),
                    {k: tuple(int(d) for d in a.shape) for k, a in record.items()},
                )
                for name, record in records.items()
            },
            {name: sent_kinds(record) for name, record in records.items()},
        )
        if len(self._sent_views) >= 8:  # a run sends a handful of distinct contents a round
            self._sent_views.clear()
        self._sent_views[key] = (content, view_)
        return view_

    def _arrays_problem(
        self, sent: Message, arrays: dict[str, ArrayRecord]
    ) -> tuple[bool, str | None]:
        view_ = self.sent_view(sent)
        carries_model = False
        for name, record in arrays.items():
            if name not in view_.allowed:
                return carries_model, f"unexpected array record '{name}'"
            expected, shapes = view_.expected.get(name, (set(self.model), {}))
            returned = {k for k in record if k in self.model}
            if returned:
                carries_model = True
                if returned != expected:
                    return carries_model, _key_difference(returned, expected)
            sent_arrays = view_.records.get(name, _NO_ARRAYS)
            kinds = view_.kinds.get(name, {})
            for key, array in list(record.items()):
                shape = shapes.get(key) or self.expected_shape(key, sent_arrays)
                want = kinds.get(key) or (self.expected_dtype(key), MAGNITUDE_CAP)
                problem, cast = self._array_problem(key, array, shape, *want)
                if problem:
                    return carries_model, problem
                if cast is not None:  # the same values in the type of what was sent
                    record[key] = encode(cast)
        return carries_model, None

    def _array_problem(
        self,
        key: str,
        array: Array,
        shape: tuple[int, ...] | None,
        dtype: np.dtype[Any] | None,
        bound: float,
    ) -> tuple[str | None, NDArray[Any] | None]:
        """What is wrong with one array, or the array cast to ``dtype`` if it needs it."""
        if shape is None:
            return f"unexpected array '{key}'", None
        try:
            # A link-coded array (compression.uplink) is checked as what it decodes to.
            rounded = is_rounded(array)
            value = decode_rounded(array)[0] if rounded else view(array)
        except Exception as exc:  # whatever the bytes are, they are not an array
            return f"array '{key}' cannot be read ({type(exc).__name__})", None
        if value.dtype.kind not in NUMERIC_KINDS:
            return f"array '{key}' has non-numeric dtype {value.dtype}", None
        if value.shape != shape:
            return f"array '{key}' has shape {list(value.shape)}, expected {list(shape)}", None
        if value.size == 0:
            return None, None
        largest = float(np.max(np.abs(value)))  # NaN if any value is NaN
        if not math.isfinite(largest):
            return f"array '{key}' has non-finite values", None
        if largest > bound:
            return (
                f"array '{key}' holds {largest:.3g}, implausibly far from what it was sent "
                f"(bound {bound:.3g})",
                None,
            )
        if dtype is None or value.dtype == dtype:
            return None, None
        problem = cast_problem(key, value, dtype, largest)
        if problem or rounded:  # a coded array's header names its type: no silent recode
            return problem or f"array '{key}' is coded as {value.dtype}, expected {dtype}", None
        return None, value.astype(dtype)

    def expected_dtype(self, key: str) -> np.dtype[Any] | None:
        """The dtype of the model array ``key`` is, or names (a per-parameter array)."""
        if key in self.dtypes:
            return self.dtypes[key]
        for prefix in self.per_parameter:
            if key.startswith(prefix) and key[len(prefix) :] in self.dtypes:
                return self.dtypes[key[len(prefix) :]]
        return None

    def expected_shape(self, key: str, sent: ArrayRecord) -> tuple[int, ...] | None:
        """The shape a reply's array ``key`` must have (None: it is unexpected)."""
        if key in sent:
            return tuple(int(d) for d in sent[key].shape)
        if key in self.model:
            return self.model[key]
        for prefix in self.per_parameter:
            if key.startswith(prefix) and key[len(prefix) :] in self.model:
                return self.model[key[len(prefix) :]]
        return None

    # ----------------------------------------------------------------- metrics

    def _metrics_problem(
        self, sent: Message, records: dict[str, MetricRecord], carries_model: bool
    ) -> str | None:
        for record in records.values():
            for key, value in record.items():
                values = value if isinstance(value, list) else [value]
                if not all(math.isfinite(v) for v in values):
                    return f"metric '{key}' is not finite"
        kind = sent.metadata.message_type
        if not kind.startswith(("train", "evaluate")):
            return None
        metrics = records.get(wire.METRICS) or next(iter(records.values()), MetricRecord())
        n = metrics.get(wire.NUM_EXAMPLES)
        if n is None:
            return f"{wire.NUM_EXAMPLES} is missing"
        if isinstance(n, list):
            return f"{wire.NUM_EXAMPLES} is a list"
        if n <= 0:
            return f"{wire.NUM_EXAMPLES} {n:g} is not positive"
        # A model's weight in the average is its node's examples; evaluations count the
        # node's examples too. Other replies (AGC) may count examples shared with them.
        own = carries_model or kind.startswith("evaluate")
        held = self.node_examples(sent.metadata.dst_node_id) if own else self.max_examples
        bound = self.max_examples if held is None else held
        if n > bound:
            return f"{wire.NUM_EXAMPLES} {n:g} exceeds the {bound:g} examples it can hold"
        # The work is over the examples the node holds; a node whose examples the server
        # cannot know trained its model on the examples it counts.
        return work_problem(sent, metrics, self.work, n if held is None else held)


def _key_difference(returned: set[str], expected: set[str]) -> str:
    missing, extra = sorted(expected - returned), sorted(returned - expected)
    parts = [f"lacks model arrays {missing}"] if missing else []
    parts += [f"has model arrays it was not sent {extra}"] if extra else []
    return "; ".join(parts)


def rejected(sent: Message, reason: str) -> Message:
    """The error reply that replaces a refused reply to ``sent``."""
    node = sent.metadata.dst_node_id
    return Message(Error(REPLY_REJECTED, f"node {node}: reply refused: {reason}"), reply_to=sent)


def checked(rules: ReplyRules | None, sent: Message, reply: Message) -> Message:
    """``reply``, or the error reply that replaces it if it breaks ``rules``."""
    if rules is None:
        return reply
    problem = rules.problem(sent, reply)
    return reply if problem is None else rejected(sent, problem)


Signature = tuple[tuple[str, tuple[str, ...]], ...]


def signature(reply: Message) -> Signature:
    """The record names and keys of a reply (what Flower's aggregation compares)."""
    return tuple(sorted((name, tuple(sorted(rec))) for name, rec in reply.content.items()))


def agreeing(
    replies: Iterable[Message],
    sent: Mapping[str, Message],
    known: Mapping[int, Signature] | None = None,
) -> list[Message]:
    """Refuse the replies whose record keys differ from the round's majority.

    Flower's aggregations abort a round when replies carry different keys; the keys most
    replies carry (the earliest such reply's, on a tie) win and the others become error
    replies. ``sent`` maps a message id to the message each reply answers; ``known``
    holds :func:`signature` of replies by ``id`` where the caller knows it already (a
    stacked chunk's replies share one).
    """
    replies = list(replies)
    known = known or {}
    shared = known.get(id(replies[0])) if replies else None
    if shared is not None and all(known.get(id(r)) is shared for r in replies):
        return replies  # one chunk's replies, all with its (one) keys
    content = [r for r in replies if not r.has_error() and r.has_content()]
    if len(content) < 2:
        return replies
    keys = {id(r): known.get(id(r)) or signature(r) for r in content}
    counts = Counter(keys.values())
    best = max(counts.values())
    majority = next(keys[id(r)] for r in content if counts[keys[id(r)]] == best)
    out: list[Message] = []
    for reply in replies:
        if reply.has_error() or not reply.has_content() or keys[id(reply)] == majority:
            out.append(reply)
            continue
        original = sent[reply.metadata.reply_to_message_id]
        out.append(rejected(original, "its keys differ from the other replies of the round"))
    return out
