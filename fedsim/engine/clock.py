"""The virtual clock: how long a message round trip takes on a simulated device."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
from numpy.typing import NDArray

from fedsim.config.schema import SystemConfig
from fedsim.engine.devices import DeviceProfile

# Evaluation is a forward pass only: about a third of a training step's work.
EVAL_COST_FACTOR = 1.0 / 3.0


class Fate(Enum):
    """What happens to one message, drawn before the client runs.

    The values are the codes :meth:`VirtualClock.draw_many` returns (int8 arrays).
    """

    OK = 0
    STRAGGLE = 1  # runs `straggle_slowdown` times slower this time
    DROPOUT = 2  # never replies (device went offline)
    FAILURE = 3  # the ClientApp raises (injected fault)


FATES = tuple(Fate)  # by code

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """SplitMix64's finaliser (Steele et al. 2014): a bijection that scatters every bit."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, dispatch: int, nodes: NDArray[np.int64], k: int) -> NDArray[np.float64]:
    """``(len(nodes), k)`` uniforms in [0, 1), each a function of (seed, dispatch, node, j).

    A counter-based draw: one vectorised hash per dispatch, whatever the nodes' order,
    the other nodes of the dispatch or how many there are (a per-node generator costs
    ~20 µs a message to seed).
    """
    key = _mix64(np.array([(seed * 0x632BE59BD9B4E019 + dispatch) & _MASK64], dtype=np.uint64))
    with np.errstate(over="ignore"):
        counters = (
            nodes.astype(np.uint64)[:, None] * np.uint64(k) + np.arange(k, dtype=np.uint64)
        ) * _GOLDEN
        bits = _mix64(_mix64(counters ^ key[0]))
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


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
        return FATES[int(self.draw_many(dispatch, np.array([node_id], dtype=np.int64))[0])]

    def draw_many(self, dispatch: int, nodes: NDArray[np.int64]) -> NDArray[np.int8]:
        """The fates (:class:`Fate` codes) of the messages sent in ``dispatch`` to ``nodes``.

        One draw for the whole dispatch; each node's fate depends only on (run seed,
        dispatch, node), so it does not depend on the order messages are handled.
        """
        cfg = self.cfg
        fates = np.zeros(len(nodes), dtype=np.int8)
        if not (cfg.dropout_prob or cfg.failure_prob or cfg.straggle_prob):
            return fates  # what the draw below returns then, without drawing
        u = uniforms(self.seed, dispatch, nodes, 3)
        # The first test that fires decides: dropout, then failure, then straggling.
        fates[u[:, 2] < cfg.straggle_prob] = Fate.STRAGGLE.value
        fates[u[:, 1] < cfg.failure_prob] = Fate.FAILURE.value
        fates[u[:, 0] < cfg.dropout_prob] = Fate.DROPOUT.value
        return fates

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

    def arrivals(
        self,
        now: float,
        link: tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]],
        down: NDArray[np.int64],
        samples: NDArray[np.float64],
        fates: NDArray[np.int8],
        up: NDArray[np.int64],
        crosses: NDArray[np.bool_],
    ) -> NDArray[np.float64]:
        """The arrival times of a dispatch's replies sent at ``now``, at once.

        ``link`` holds each message's device (speed, downlink and uplink Mbit/s);
        ``down``/``up`` the bytes each way, ``samples`` the work done and ``crosses``
        whether the message crosses the simulated network (not ``local-compute``).
        ``now`` + :meth:`download_s`, + :meth:`compute_s`, + :meth:`upload_s`,
        operation for operation, so either way gives the same floats.
        """
        speed, downlink, uplink = link
        latency = self.cfg.latency_s
        slow = np.where(fates == Fate.STRAGGLE.value, self.cfg.straggle_slowdown, 1.0)
        down_s = np.where(crosses, latency + 8.0 * down / (downlink * 1e6), 0.0)
        up_s = np.where(crosses, latency + 8.0 * up / (uplink * 1e6), 0.0)
        return now + down_s + samples * self.cfg.seconds_per_sample * slow / speed + up_s
