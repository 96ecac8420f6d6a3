"""One message's way over the virtual clock: its fate, its copy, its work, its arrival.

Every grid that keeps the clock handles a dispatch in three phases: :func:`plan_message`
draws each message's fate (seeded by run seed, dispatch and node), the clients run
(in-process: ``InProcessGrid._dispatch_all``; on Flower's runtimes: the messages not
dropped are sent, see :mod:`fedsim.engine.observed_grid`), then :func:`settle` stamps
each outcome with its virtual arrival and :func:`cut_at_deadline` keeps the replies that
beat ``system.deadline_s``. A :class:`Plan` carries one message between the phases. One
code path decides fates and times on every engine, so their metrics agree.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord

from fedsim import wire
from fedsim.array_codec import decoding_arrays
from fedsim.engine.availability import wait_for_online
from fedsim.engine.clock import EVAL_COST_FACTOR, Fate, VirtualClock
from fedsim.engine.devices import DeviceProfile
from fedsim.engine.executor import Outcome
from fedsim.engine.reply_check import ReplyRules, checked
from fedsim.engine.telemetry import Telemetry, content_bytes, reply_metrics
from fedsim.errors import FedsimError

CLIENT_APP_RAISED_EXCEPTION = 2  # flwr.common.constant.ErrorCode


class InjectedFault(RuntimeError):
    """Raised in place of a client when the scenario's ``system.failure_prob`` fires."""


class DeviceTraceExhausted(FedsimError):
    """A device trace never again has as many devices online as a round needs."""


@dataclass(order=True)
class Pending:
    """A reply waiting for its arrival time (asynchronous pulls hand them out in order)."""

    arrival: float
    seq: int
    message_id: str = field(compare=False)
    reply: Message = field(compare=False)


@dataclass
class Plan:
    """One message of a dispatch between its three phases (see ``_dispatch_all``)."""

    message: Message
    message_id: str
    node: int
    device: DeviceProfile
    fate: Fate
    nbytes: int
    now: float  # simulated time it was sent
    offline: bool = False  # its node was offline when it was sent
    delivered: Message | None = None  # the node's own copy, when the client runs
    outcome: Outcome | None = None  # its reply or what the client raised


def plan_message(
    clock: VirtualClock,
    devices: Mapping[int, DeviceProfile],
    dispatch: int,
    message: Message,
    message_id: str,
    nbytes: int,
    node: int | None = None,
) -> Plan:
    """Draw ``message``'s fate; copy what its node will be handed if it runs.

    ``node`` is the node's id on the clock (its partition's in-process id), by default
    the message's destination: fates are drawn and devices looked up by it.
    """
    node = message.metadata.dst_node_id if node is None else node
    device = devices[node]
    fate = clock.draw(dispatch, node)
    plan = Plan(message, message_id, node, device, fate, nbytes, clock.now)
    if fate is Fate.DROPOUT:
        return plan
    if device.availability is not None and not device.availability.online_at(plan.now):
        plan.offline = True
        return plan
    if fate is Fate.FAILURE:
        plan.outcome = InjectedFault("fault injected by system.failure_prob")
        return plan
    # The node's own metadata; its own content containers only if the ClientApp is
    # called (the executor copies then: training together only reads them).
    plan.delivered = Message(  # type: ignore[call-overload]  # flwr's own copy path
        content=message.content, metadata=copy.copy(message.metadata)
    )
    return plan


def is_local(message: Message) -> bool:
    """Whether ``message`` asks for compute only (config ``local-compute``)."""
    config = message.content.get(wire.CONFIG) if message.has_content() else None
    return isinstance(config, ConfigRecord) and bool(config.get(wire.LOCAL_COMPUTE, False))


def work_of(kind: str, metrics: MetricRecord) -> float:
    """Training examples' worth of compute a reply represents (drives the clock)."""
    if kind.startswith("train"):
        return float(metrics.get(wire.TRAIN_SAMPLES, metrics.get(wire.NUM_EXAMPLES, 0)))  # type: ignore[arg-type]
    if kind.startswith("evaluate"):
        return EVAL_COST_FACTOR * float(metrics.get(wire.NUM_EXAMPLES, 0))  # type: ignore[arg-type]
    return 0.0


def arrive(
    clock: VirtualClock,
    telemetry: Telemetry,
    dispatch: int,
    node: int,
    device: DeviceProfile,
    sent: float,
    arrival: float,
    reply: Message,
) -> tuple[float, Message | None]:
    """The reply at its arrival time, or a dropout if the device goes offline first.

    The client has run by then (its ``context.state`` keeps what it did, as a real
    device that trained and lost its connection before uploading would).
    """
    if device.availability is not None:
        offline = device.availability.offline_at(sent)
        if offline < arrival:
            clock.record(offline, node, "dropout", dispatch)
            telemetry.current.dropouts += 1
            return offline, None
    clock.record(arrival, node, "reply", dispatch)
    return arrival, reply


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
    plan: Plan,
) -> tuple[float, Message | None]:
    """Stamp one message's outcome on the clock: (arrival, reply or None for a dropout).

    ``plan.outcome`` is the client's reply or what it raised (an injected fault, a
    timeout); a raised one becomes an error reply naming the node. The reply is checked
    against ``rules`` and counted (bytes both ways, privacy spent) in ``telemetry``.
    """
    message, node, device, now = plan.message, plan.node, plan.device, plan.now
    local = is_local(message)  # nothing crosses the simulated network
    telemetry.current.bytes_down += 0 if local else plan.nbytes
    if plan.fate is Fate.DROPOUT:
        telemetry.current.dropouts += 1
        return 0.0, None
    if plan.offline:
        clock.record(now, node, "offline", dispatch)
        telemetry.current.dropouts += 1
        return now, None
    clock.record(now, node, "sent", dispatch)
    t = now + (0.0 if local else clock.download_s(device, plan.nbytes))
    outcome = plan.outcome
    try:
        if isinstance(outcome, BaseException):
            raise outcome
        reply = checked(rules, message, outcome)  # type: ignore[arg-type]  # set by the caller
    except Exception as exc:  # a failing client never kills a run
        reply = Message(
            Error(wire.CLIENT_APP_RAISED_EXCEPTION, f"node {node}: {type(exc).__name__}: {exc}"),
            reply_to=message,
        )
    if reply.has_error():
        up_s = 0.0 if local else clock.upload_s(device, 0)
        return arrive(clock, telemetry, dispatch, node, device, now, t + up_s, reply)
    for record in reply.content.values():
        if isinstance(record, ArrayRecord):  # the strategy decodes them: fast, please
            decoding_arrays(record)
    up = 0 if local else content_bytes(reply)
    metrics = reply_metrics(reply)
    t += clock.compute_s(device, work_of(message.metadata.message_type, metrics), plan.fate)
    up_s = 0.0 if local else clock.upload_s(device, up)
    arrival, delivered = arrive(clock, telemetry, dispatch, node, device, now, t + up_s, reply)
    if delivered is not None:
        telemetry.record_upload(reply, up, metrics)
    return arrival, delivered


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
