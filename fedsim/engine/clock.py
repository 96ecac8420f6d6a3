"""The virtual clock: how long a message round trip takes on a simulated device."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

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

        Each node's fate depends only on (run seed, dispatch, node), so it does not depend
        on the order messages are handled or on the other nodes of the dispatch. Each is
        drawn from its own generator seeded by those three numbers, the draw recorded
        runs were made with (about 20 us a message: only runs whose ``system`` draws
        fates pay it). A counter-based hash over the whole dispatch would be faster but
        would give every recorded run with stragglers other fates.
        """
        cfg = self.cfg
        fates = np.zeros(len(nodes), dtype=np.int8)
        if not (cfg.dropout_prob or cfg.failure_prob or cfg.straggle_prob):
            return fates  # what the draw below returns then, without seeding a generator
        for k, node in enumerate(nodes.tolist()):
            u = np.random.default_rng([self.seed, dispatch, node]).random(3)
            # The first test that fires decides: dropout, then failure, then straggling.
            if u[0] < cfg.dropout_prob:
                fates[k] = Fate.DROPOUT.value
            elif u[1] < cfg.failure_prob:
                fates[k] = Fate.FAILURE.value
            elif u[2] < cfg.straggle_prob:
                fates[k] = Fate.STRAGGLE.value
        return fates

    def download_s(self, device: DeviceProfile, nbytes: int) -> float:
        """Seconds to receive ``nbytes`` (one latency plus transfer)."""
        return float(self._transfer_s(nbytes, device.downlink_mbps))

    def upload_s(self, device: DeviceProfile, nbytes: int) -> float:
        """Seconds to send ``nbytes`` back."""
        return float(self._transfer_s(nbytes, device.uplink_mbps))

    def compute_s(self, device: DeviceProfile, samples: float, fate: Fate) -> float:
        """Seconds to process ``samples`` training examples on ``device``."""
        slow = self.cfg.straggle_slowdown if fate is Fate.STRAGGLE else 1.0
        return float(self._work_s(samples, slow, device.speed))

    # The timing model's two formulas, on numbers or on a dispatch's columns alike (one
    # expression for both, so the per-message and the dispatch's times are the same floats).
    def _transfer_s(self, nbytes: Any, mbps: Any) -> Any:
        return self.cfg.latency_s + 8.0 * nbytes / (mbps * 1e6)

    def _work_s(self, samples: Any, slow: Any, speed: Any) -> Any:
        return samples * self.cfg.seconds_per_sample * slow / speed

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
        slow = np.where(fates == Fate.STRAGGLE.value, self.cfg.straggle_slowdown, 1.0)
        down_s = np.where(crosses, self._transfer_s(down, downlink), 0.0)
        up_s = np.where(crosses, self._transfer_s(up, uplink), 0.0)
        return now + down_s + self._work_s(samples, slow, speed) + up_s  # type: ignore[no-any-return]
