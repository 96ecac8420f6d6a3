"""The first phase of a dispatch: every message's fate, drawn at once, as columns.

See :mod:`fedsim.engine.delivery` for the three phases. :func:`plan_dispatch` draws the
fates of a whole dispatch in one call (:meth:`VirtualClock.draw_many`), looks the
devices up in a :class:`DeviceTable` and notes which nodes are offline; the
:class:`DispatchPlan` it returns carries the dispatch to the executor and then to
:func:`fedsim.engine.delivery.settle`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Message
from numpy.typing import NDArray

from fedsim import wire
from fedsim.engine.clock import Fate, VirtualClock
from fedsim.engine.devices import DeviceProfile
from fedsim.engine.executor import Outcome, Outcomes
from fedsim.engine.telemetry import content_bytes
from fedsim.reply_chunk import ReplyChunk


class InjectedFault(RuntimeError):
    """Raised in place of a client when the scenario's ``system.failure_prob`` fires."""


@dataclass(frozen=True)
class DeviceTable:
    """The device population as columns, so a dispatch looks its devices up at once.

    ``rows[node]`` is the node's row; ``link`` its (speed, downlink, uplink) columns.
    """

    rows: dict[int, int]
    profiles: list[DeviceProfile]
    link: tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]
    traced: bool  # some device has an availability trace

    @classmethod
    def of(cls, devices: Mapping[int, DeviceProfile]) -> DeviceTable:
        """The table of ``devices`` (node id -> profile)."""
        profiles = list(devices.values())
        link = tuple(
            np.array([getattr(d, name) for d in profiles], dtype=np.float64)
            for name in ("speed", "downlink_mbps", "uplink_mbps")
        )
        return cls(
            {node: row for row, node in enumerate(devices)},
            profiles,
            link,  # type: ignore[arg-type]  # three columns
            any(d.availability is not None for d in profiles),
        )


@dataclass
class DispatchPlan:
    """One dispatch between its three phases (see the module docstring), as columns.

    Position ``i`` is the dispatch's ``i``-th message throughout.
    """

    messages: list[Message]
    ids: list[str]
    nodes: list[int]  # each message's node on the clock
    rows: NDArray[np.intp]  # its device's row in the DeviceTable
    fates: NDArray[np.int8]  # Fate codes
    nbytes: NDArray[np.int64]  # payload bytes
    crosses: NDArray[np.bool_]  # crosses the simulated network (not local-compute)
    now: float  # simulated time the dispatch was sent
    offline: NDArray[np.bool_]  # its node was offline when it was sent
    outcomes: list[Outcome | None]  # each reply or what its client raised
    chunks: list[ReplyChunk] = field(default_factory=list)  # stacked replies, by position

    def runs(self) -> list[int]:
        """The positions whose clients run: not dropped, online, no injected failure."""
        runs = (self.fates != Fate.DROPOUT.value) & (self.fates != Fate.FAILURE.value)
        return np.flatnonzero(runs & ~self.offline).tolist()

    def deliver(self, runs: list[int], outcomes: Outcomes) -> None:
        """Take the executor's ``outcomes`` of the jobs at positions ``runs``."""
        for i, outcome in zip(runs, outcomes.each, strict=True):
            self.outcomes[i] = outcome
        self.chunks = [chunk.at(runs) for chunk in outcomes.chunks]


def plan_dispatch(
    clock: VirtualClock,
    table: DeviceTable,
    dispatch: int,
    messages: list[Message],
    ids: list[str],
    nodes: list[int] | None = None,
) -> DispatchPlan:
    """Draw every message's fate at once; note which nodes are offline.

    ``nodes[i]`` is message ``i``'s node on the clock (its partition's in-process id),
    by default its destination: fates are drawn and devices looked up by it. Nothing is
    copied: the executor copies what a ClientApp will be handed (training together only
    reads the messages).
    """
    nodes = [m.metadata.dst_node_id for m in messages] if nodes is None else nodes
    count = len(messages)
    rows = np.fromiter((table.rows[n] for n in nodes), dtype=np.intp, count=count)
    fates = clock.draw_many(dispatch, np.asarray(nodes, dtype=np.int64))
    # Flower's strategies share one content among a dispatch's messages: sized once.
    sizes: dict[int, tuple[int, bool]] = {}
    each = []
    for message in messages:
        key = id(message.content)  # the contents stay alive, so ids stay unique
        size = sizes.get(key)
        if size is None:
            size = sizes[key] = (content_bytes(message), not is_local(message))
        each.append(size)
    nbytes = np.array([b for b, _ in each], dtype=np.int64).reshape(count)
    crosses = np.array([c for _, c in each], dtype=bool).reshape(count)
    now = clock.now
    offline = np.zeros(count, dtype=bool)
    if table.traced:
        for i, row in enumerate(rows.tolist()):
            availability = table.profiles[row].availability
            if fates[i] == Fate.DROPOUT.value or availability is None:
                continue  # a dropout is never sent: its node is not asked
            offline[i] = not availability.online_at(now)
    outcomes: list[Outcome | None] = [None] * count
    for i in np.flatnonzero((fates == Fate.FAILURE.value) & ~offline).tolist():
        outcomes[i] = InjectedFault("fault injected by system.failure_prob")
    return DispatchPlan(messages, ids, nodes, rows, fates, nbytes, crosses, now, offline, outcomes)


def is_local(message: Message) -> bool:
    """Whether ``message`` asks for compute only (config ``local-compute``)."""
    config = message.content.get(wire.CONFIG) if message.has_content() else None
    return isinstance(config, ConfigRecord) and bool(config.get(wire.LOCAL_COMPUTE, False))
