"""What a grid can do beyond Flower's ``Grid``, as named Protocols.

The ServerApp and the strategies run on any grid: fedsim's in-process one, the
:class:`~fedsim.engine.observed_grid.ObservedGrid` around Flower's own (Ray,
deployment), or Flower's plain grid. They learn what it can do by checking these
Protocols (``isinstance``), never by probing attribute names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from flwr.app import ArrayRecord, Message

from fedsim.engine.clock import VirtualClock
from fedsim.engine.devices import DeviceProfile
from fedsim.engine.reply_work import WorkBound
from fedsim.engine.telemetry import Telemetry


@runtime_checkable
class ObservedRounds(Protocol):
    """A grid that counts each round's participants, failures and bytes (fedsim's own)."""

    telemetry: Telemetry


@runtime_checkable
class ReplyCheckingGrid(Protocol):
    """A grid that checks every reply against the model before a strategy sees it."""

    def check_replies(
        self,
        model: ArrayRecord,
        partition_examples: Sequence[int],
        per_parameter: Sequence[str] = (),
        work: WorkBound | None = None,
    ) -> None:
        """Check replies from now on against ``model`` and each node's example count."""


@runtime_checkable
class ResumableGrid(Protocol):
    """A grid whose engine state can be saved and restored (the in-process grid)."""

    def engine_state(self) -> dict[str, Any]:
        """Return the engine's state between rounds (in the types of ``state_codec``)."""

    def restore_engine_state(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`engine_state` returned."""


@runtime_checkable
class Link(Protocol):
    """A device's network links (fedsim's ``DeviceProfile`` has them)."""

    @property
    def uplink_mbps(self) -> float:
        """Upload bandwidth, Mbit/s."""

    @property
    def downlink_mbps(self) -> float:
        """Download bandwidth, Mbit/s."""


@runtime_checkable
class TimedGrid(Protocol):
    """A grid that keeps simulated time (fedsim's grids; None where it keeps none)."""

    @property
    def virtual_time_s(self) -> float | None:
        """Simulated seconds since the run started."""


@runtime_checkable
class VirtualClockGrid(Protocol):
    """A grid with simulated time and device links (fedsim's in-process engine)."""

    @property
    def virtual_time_s(self) -> float:
        """Simulated seconds since the run started."""

    @property
    def latency_s(self) -> float:
        """One-way latency of every link."""

    def device(self, node_id: int) -> Link:
        """The node's links."""

    def pull_messages_until(self, message_ids: Iterable[str], until_s: float) -> list[Message]:
        """Pull replies, never moving simulated time past ``until_s``."""


@runtime_checkable
class ClockedGrid(Protocol):
    """A grid with a virtual clock and simulated devices (its log and traces are outputs)."""

    clock: VirtualClock
    devices: dict[int, DeviceProfile]
