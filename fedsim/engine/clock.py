"""The virtual clock: how long a message round trip takes on a simulated device."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from fedsim.config.schema import SystemConfig
from fedsim.engine.devices import DeviceProfile

# Evaluation is a forward pass only: about a third of a training step's work.
EVAL_COST_FACTOR = 1.0 / 3.0


class Fate(Enum):
    """What happens to one message, drawn before the client runs."""

    OK = "ok"
    STRAGGLE = "straggle"  # runs `straggle_slowdown` times slower this time
    DROPOUT = "dropout"  # never replies (device went offline)
    FAILURE = "failure"  # the ClientApp raises (injected fault)


@dataclass(frozen=True)
class ClockEvent:
    """One entry of the clock's log (kept for runs with a device trace).

    Attributes
    ----------
    time_s : float
        Virtual time of the event.
    node : int
        The node (``-1`` for the server's own events).
    kind : str
        ``sent`` (a message reached an online node), ``offline`` (its node was offline
        when it was sent: never delivered), ``reply`` (the reply arrives), ``dropout``
        (the node went offline before its reply was sent), ``wait`` (the server waited
        until ``system.trace.min_online`` nodes were online).
    dispatch : int
        The dispatch (one batch of messages) the event belongs to.
    """

    time_s: float
    node: int
    kind: str
    dispatch: int


class VirtualClock:
    """Simulated time of a run plus the per-message timing model.

    A reply's round-trip time is ``latency + bytes_down / downlink``, then
    ``work * seconds_per_sample / speed`` (times ``straggle_slowdown`` when the device
    straggles), then ``latency + bytes_up / uplink``. All draws are seeded by (run seed,
    dispatch index, node), so they do not depend on the order messages are handled.

    Parameters
    ----------
    cfg : SystemConfig
        The scenario's ``system`` section.
    seed : int
        The run seed.
    """

    def __init__(self, cfg: SystemConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.now = 0.0
        # Only trace-driven runs keep a log: there availability makes timing worth reading.
        self.events: list[ClockEvent] | None = [] if cfg.trace is not None else None

    def record(self, time_s: float, node: int, kind: str, dispatch: int) -> None:
        """Append an event to the log (a no-op when the clock keeps none)."""
        if self.events is not None:
            self.events.append(ClockEvent(time_s, node, kind, dispatch))

    def draw(self, dispatch: int, node_id: int) -> Fate:
        """Draw the fate of the message sent in ``dispatch`` to ``node_id``."""
        if not (self.cfg.dropout_prob or self.cfg.failure_prob or self.cfg.straggle_prob):
            return Fate.OK  # what the draw below returns then, without seeding a generator
        rng = np.random.default_rng([self.seed, dispatch, node_id])
        u = rng.random(3)
        if u[0] < self.cfg.dropout_prob:
            return Fate.DROPOUT
        if u[1] < self.cfg.failure_prob:
            return Fate.FAILURE
        if u[2] < self.cfg.straggle_prob:
            return Fate.STRAGGLE
        return Fate.OK

    def download_s(self, device: DeviceProfile, nbytes: int) -> float:
        """Seconds to receive ``nbytes`` (one latency plus transfer)."""
        return self.cfg.latency_s + 8.0 * nbytes / (device.downlink_mbps * 1e6)

    def upload_s(self, device: DeviceProfile, nbytes: int) -> float:
        """Seconds to send ``nbytes`` back."""
        return self.cfg.latency_s + 8.0 * nbytes / (device.uplink_mbps * 1e6)

    def compute_s(self, device: DeviceProfile, samples: float, fate: Fate) -> float:
        """Seconds to process ``samples`` training examples on ``device``."""
        slow = self.cfg.straggle_slowdown if fate is Fate.STRAGGLE else 1.0
        return samples * self.cfg.seconds_per_sample * slow / device.speed
