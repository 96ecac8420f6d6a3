"""One message's way through the in-process engine: its fate, its copy, its work.

The in-process grid handles a dispatch in three phases (see
``InProcessGrid._dispatch_all``); a :class:`Plan` carries one message between them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, Message, MetricRecord

from fedsim import wire
from fedsim.engine.availability import wait_for_online
from fedsim.engine.clock import EVAL_COST_FACTOR, Fate, VirtualClock
from fedsim.engine.devices import DeviceProfile
from fedsim.engine.executor import Outcome
from fedsim.engine.telemetry import Telemetry
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
) -> Plan:
    """Draw ``message``'s fate; copy what its node will be handed if it runs."""
    node = message.metadata.dst_node_id
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
