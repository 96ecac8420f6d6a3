"""A dispatch's way over the virtual clock: its fates, its work, its arrivals.

Every grid that keeps the clock handles a dispatch in three phases:
:func:`~fedsim.engine.dispatch_plan.plan_dispatch`
draws every message's fate at once (each seeded by run seed, dispatch and node), the
clients run (in-process: ``InProcessGrid._dispatch_all``; on Flower's runtimes: the
messages not dropped are sent, see :mod:`fedsim.engine.observed_grid`), then
:func:`settle` checks the replies (a stacked chunk's at once), stamps every outcome with
its virtual arrival and :func:`cut_at_deadline` keeps the replies that beat
``system.deadline_s``. A :class:`DispatchPlan` carries the dispatch between the phases
as columns (fates, bytes, devices), so the engine's cost per message is a few array
entries, not objects. One code path decides fates and times on every engine, so their
metrics agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Error, Message, MetricRecord
from numpy.typing import NDArray

from fedsim import wire
from fedsim.array_codec import decoding_arrays
from fedsim.engine.availability import wait_for_online
from fedsim.engine.clock import EVAL_COST_FACTOR, Fate, VirtualClock
from fedsim.engine.dispatch_plan import DeviceTable, DispatchPlan
from fedsim.engine.reply_check import ReplyRules, Signature, checked, rejected, signature
from fedsim.engine.telemetry import (
    Delivered,
    RoundStats,
    Telemetry,
    content_bytes,
    reply_metrics,
)
from fedsim.errors import FedsimError
from fedsim.reply_chunk import ReplyChunk

CLIENT_APP_RAISED_EXCEPTION = 2  # flwr.common.constant.ErrorCode


class DeviceTraceExhausted(FedsimError):
    """A device trace never again has as many devices online as a round needs."""


@dataclass(order=True)
class Pending:
    """A reply waiting for its arrival time (asynchronous pulls hand them out in order)."""

    arrival: float
    seq: int
    message_id: str = field(compare=False)
    reply: Message = field(compare=False)


@dataclass(frozen=True)
class Settled:
    """A settled dispatch: each message's (arrival, reply or None for a dropout).

    ``known`` holds the record keys (:func:`~fedsim.engine.reply_check.signature`) of
    the stacked replies, by ``id``: they share one, worked out once per chunk;
    ``delivered`` their metrics as telemetry counts them (read from the chunk's columns);
    ``rows`` each one's chunk and row.
    """

    arrivals: list[tuple[float, Message | None]]
    known: dict[int, Signature]
    delivered: dict[int, Delivered] = field(default_factory=dict)  # stacked, by id
    rows: dict[int, tuple[ReplyChunk, int]] = field(default_factory=dict)  # stacked, by id


def work_of(kind: str, metrics: MetricRecord) -> float:
    """Training examples' worth of compute a reply represents (drives the clock)."""
    if kind.startswith("train"):
        return float(metrics.get(wire.TRAIN_SAMPLES, metrics.get(wire.NUM_EXAMPLES, 0)))  # type: ignore[arg-type]
    if kind.startswith("evaluate"):
        return EVAL_COST_FACTOR * float(metrics.get(wire.NUM_EXAMPLES, 0))  # type: ignore[arg-type]
    return 0.0


def online_nodes(
    clock: VirtualClock, availability: Mapping[int, Any], min_online: int, dispatch: int
) -> list[int]:
    """Move simulated time on until ``min_online`` nodes are online; return those online.

    Raises
    ------
    DeviceTraceExhausted
        If the trace never again has that many devices online.
    """
    now = clock.now
    t, online = wait_for_online(availability, now, min_online)
    if math.isinf(t):
        raise DeviceTraceExhausted(
            f"system.trace: fewer than {min_online} devices are ever online after "
            f"virtual time {now:.0f} s; give the trace a period_s or lower min_online"
        )
    if t > now:
        clock.record(t, -1, "wait", dispatch)
        clock.now = t
    return online


def settle(
    clock: VirtualClock,
    telemetry: Telemetry,
    rules: ReplyRules | None,
    dispatch: int,
    plan: DispatchPlan,
    table: DeviceTable,
) -> Settled:
    """Stamp every outcome on the clock: its arrival and reply (None for a dropout).

    ``plan.outcomes`` are the clients' replies or what they raised (an injected fault,
    a timeout); a raised one becomes an error reply naming the node. Replies are
    checked against ``rules`` (a stacked chunk's at once) and counted (bytes both
    ways, privacy spent) in ``telemetry``. The arrivals are computed for the whole
    dispatch at once (:meth:`VirtualClock.arrivals`).
    """
    count = len(plan.messages)
    stats = telemetry.current
    stats.bytes_down += int(plan.nbytes[plan.crosses].sum())
    dropped = plan.fates == Fate.DROPOUT.value
    stats.dropouts += int(dropped.sum()) + int(plan.offline.sum())
    replies: list[Message | None] = [None] * count
    samples = np.zeros(count)  # work done (none for an error reply)
    up = np.zeros(count, dtype=np.int64)
    eps = np.full(count, np.nan)  # privacy spent, where a reply says
    answered = np.zeros(count, dtype=bool)  # a reply that is not an error
    done: set[int] = set()
    known: dict[int, Signature] = {}
    delivered: dict[int, Delivered] = {}
    rows_of: dict[int, tuple[ReplyChunk, int]] = {}
    for chunk in plan.chunks:
        _take_chunk(rules, plan, chunk, replies, samples, up, eps, answered)
        done.update(chunk.jobs)
        keys = signature(chunk.replies[0])  # every row carries the same records and keys
        known.update((id(r), keys) for r in chunk.replies)
        delivered.update(zip(map(id, chunk.replies), _delivered(chunk), strict=True))
        rows_of.update((id(r), (chunk, k)) for k, r in enumerate(chunk.replies))
    runs = np.flatnonzero(~dropped & ~plan.offline)
    for i in runs.tolist():
        if i not in done:
            replies[i], samples[i], up[i], eps[i] = _take_single(rules, plan, i)
            answered[i] = not replies[i].has_error()  # type: ignore[union-attr]  # just set
    up[~plan.crosses] = 0  # nothing crosses the simulated network
    arrival = np.zeros(count)
    arrival[plan.offline] = plan.now
    rows = plan.rows[runs]
    link = tuple(column[rows] for column in table.link)
    arrival[runs] = clock.arrivals(
        plan.now,
        link,  # type: ignore[arg-type]  # three columns
        plan.nbytes[runs],
        samples[runs],
        plan.fates[runs],
        up[runs],
        plan.crosses[runs],
    )
    if table.traced:
        _gone_offline(table, plan, runs, arrival, replies, stats)
    if clock.events is not None:
        _log(clock, dispatch, plan, arrival, replies)
    arrived = answered & np.fromiter((r is not None for r in replies), dtype=bool, count=count)
    stats.bytes_up += int(up[arrived].sum())
    spent = eps[arrived]
    spent = spent[np.isfinite(spent)]
    if len(spent):
        telemetry.record_epsilon(float(spent.max()))
    return Settled(list(zip(arrival.tolist(), replies, strict=True)), known, delivered, rows_of)


def _delivered(chunk: ReplyChunk) -> list[Delivered]:
    """Each row's (train loss, num-examples, attacker), the values its reply carries."""
    rows = len(chunk.jobs)
    metrics = chunk.metrics
    losses = metrics[wire.TRAIN_LOSS].tolist() if wire.TRAIN_LOSS in metrics else [None] * rows
    counts = metrics[wire.NUM_EXAMPLES].tolist() if wire.NUM_EXAMPLES in metrics else [None] * rows
    attacker = metrics.get(wire.ATTACKER_METRIC)
    flags = [False] * rows if attacker is None else (attacker == 1).tolist()
    return list(zip(losses, counts, flags, strict=True))


def _take_chunk(
    rules: ReplyRules | None,
    plan: DispatchPlan,
    chunk: ReplyChunk,
    replies: list[Message | None],
    samples: NDArray[np.float64],
    up: NDArray[np.int64],
    eps: NDArray[np.float64],
    answered: NDArray[np.bool_],
) -> None:
    """Check a stacked chunk's replies at once and put their numbers in the columns."""
    jobs = list(chunk.jobs)
    sent = [plan.messages[i] for i in jobs]
    problems = [None] * len(jobs) if rules is None else rules.chunk_problems(sent, chunk)
    work = chunk.column(wire.TRAIN_SAMPLES)
    work = np.where(np.isnan(work), chunk.column(wire.NUM_EXAMPLES, 0.0), work)
    ok = np.array([p is None for p in problems], dtype=bool)
    answered[jobs] = ok
    samples[jobs] = np.where(ok, work, 0.0)
    up[jobs] = np.where(ok, chunk.reply_bytes, 0)
    eps[jobs] = chunk.column(wire.EPSILON)
    for i, message, reply, problem in zip(jobs, sent, chunk.replies, problems, strict=True):
        replies[i] = reply if problem is None else rejected(message, problem)


def _take_single(
    rules: ReplyRules | None, plan: DispatchPlan, i: int
) -> tuple[Message, float, int, float]:
    """One outcome as a checked reply: (reply, work done, bytes up, privacy spent)."""
    message, outcome = plan.messages[i], plan.outcomes[i]
    try:
        if isinstance(outcome, BaseException):
            raise outcome
        reply = checked(rules, message, outcome)  # type: ignore[arg-type]  # set by the caller
    except Exception as exc:  # a failing client never kills a run
        node = plan.nodes[i]
        reply = Message(
            Error(wire.CLIENT_APP_RAISED_EXCEPTION, f"node {node}: {type(exc).__name__}: {exc}"),
            reply_to=message,
        )
    if reply.has_error():
        return reply, 0.0, 0, math.nan
    for record in reply.content.values():
        if isinstance(record, ArrayRecord):  # the strategy decodes them: fast, please
            decoding_arrays(record)
    metrics = reply_metrics(reply)
    eps = metrics.get(wire.EPSILON)
    spent = float(eps) if isinstance(eps, int | float) else math.nan
    work = work_of(message.metadata.message_type, metrics)
    return reply, work, content_bytes(reply), spent


def _gone_offline(
    table: DeviceTable,
    plan: DispatchPlan,
    runs: NDArray[np.intp],
    arrival: NDArray[np.float64],
    replies: list[Message | None],
    stats: RoundStats,
) -> None:
    """Replies whose device goes offline before they arrive become dropouts then.

    The client has run by then (its ``context.state`` keeps what it did, as a real
    device that trained and lost its connection before uploading would).
    """
    for i in runs.tolist():
        availability = table.profiles[plan.rows[i]].availability
        if availability is None:
            continue
        offline = availability.offline_at(plan.now)
        if offline < arrival[i]:
            arrival[i], replies[i] = offline, None
            stats.dropouts += 1


def _log(
    clock: VirtualClock,
    dispatch: int,
    plan: DispatchPlan,
    arrival: NDArray[np.float64],
    replies: list[Message | None],
) -> None:
    """The clock's log of the dispatch, message by message (runs with a device trace)."""
    for i, fate in enumerate(plan.fates.tolist()):
        node = plan.nodes[i]
        if fate == Fate.DROPOUT.value:
            continue
        if plan.offline[i]:
            clock.record(plan.now, node, "offline", dispatch)
            continue
        clock.record(plan.now, node, "sent", dispatch)
        clock.record(float(arrival[i]), node, "reply" if replies[i] else "dropout", dispatch)


def cut_at_deadline(
    clock: VirtualClock,
    telemetry: Telemetry,
    start: float,
    deadline_s: float | None,
    settled: list[tuple[float, Message | None]],
) -> list[Message]:
    """The replies that beat ``start + deadline_s``, in arrival order; the clock moves on.

    Later replies are counted as stragglers and the round ends at the deadline; without
    one late, it ends at its last arrival. A device that goes offline mid-round is seen
    to drop out when it does: the round waits for that as it would for its reply (random
    dropouts carry no time).
    """
    arrived = sorted((a, i, reply) for i, (a, reply) in enumerate(settled) if reply is not None)
    cutoff = math.inf if deadline_s is None else start + deadline_s
    lost = [a for a, reply in settled if reply is None and start < a <= cutoff]
    if not arrived:
        clock.now = max([start, *lost])
        return []
    on_time = [(a, reply) for a, _, reply in arrived if a <= cutoff]
    late = len(arrived) - len(on_time)
    telemetry.current.stragglers += late
    clock.now = cutoff if late else max([*(a for a, _ in on_time), *lost])
    return [reply for _, reply in on_time]
