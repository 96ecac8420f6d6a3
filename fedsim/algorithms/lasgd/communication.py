"""How decentralised workers exchange models on the virtual clock (used by LASGD).

Two patterns, by registry name (``strategy.params.communication``):

``allreduce``
    A ring All-Reduce of the workers' j-th snapshots. It can finish only when its
    slowest participant has contributed, then takes :func:`ring_allreduce_s`; the ring
    carries one All-Reduce at a time, in order. On completion every worker merges
    ``x <- x̄ + α (x - s)`` with its own snapshot s.
``gossip``
    Push-sum (SGP, Assran et al. 2019) on the time-varying exponential graph: at its
    r-th exchange worker k halves its push-sum weight and sends (weight, model) to the
    worker 2^(r mod log2 n) places after it in the ring; the message takes one latency
    plus the model's bytes over that link. The receiver merges it into its de-biased
    model ``z <- (w z + w_m z_m) / (w + w_m)``.

Workers keep computing while an exchange is under way; :class:`Communication` only
schedules completions and computes merges, the driver (:mod:`fedsim.algorithms.lasgd.server`)
decides who waits. Every model here is a dict of float32 arrays, never mutated in place.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from fedsim.engine.protocols import Link
from fedsim.registry import Registry

Arrays = dict[str, NDArray[np.float32]]  # one model: parameter name -> array


def transfer_s(nbytes: int, mbps: float, latency_s: float) -> float:
    """Seconds to send ``nbytes`` over a link of ``mbps`` (one latency plus transfer)."""
    return latency_s + 8.0 * nbytes / (mbps * 1e6)


def ring_allreduce_s(nbytes: int, links: Sequence[Link], latency_s: float) -> float:
    """Duration of a ring All-Reduce of ``nbytes`` per worker, workers in ring order.

    ``2(n-1)/n * nbytes`` over the slowest link of the ring (worker k sends on its
    uplink to worker k+1's downlink) plus ``2(n-1)`` latencies: the n-1 reduce-scatter
    and n-1 all-gather hops, each of one chunk of ``nbytes / n``, in lockstep.
    """
    n = len(links)
    if n < 2:
        return 0.0
    slowest = min(min(links[k].uplink_mbps, links[(k + 1) % n].downlink_mbps) for k in range(n))
    return 2 * (n - 1) / n * 8.0 * nbytes / (slowest * 1e6) + 2 * (n - 1) * latency_s


def mean_model(models: Sequence[Arrays]) -> Arrays:
    """Uniform mean of models (accumulated in float64, returned in their dtype)."""
    return {
        k: np.asarray(np.mean(np.stack([m[k] for m in models]), axis=0, dtype=np.float64)).astype(
            v.dtype
        )
        for k, v in models[0].items()
    }


@dataclass(frozen=True)
class Completion:
    """What an exchange's completion changes.

    Attributes
    ----------
    senders : tuple of int
        Workers with one exchange fewer outstanding.
    receivers : tuple of int
        Workers with a merge ready.
    """

    senders: tuple[int, ...]
    receivers: tuple[int, ...]


class Communication(ABC):
    """Schedules the exchanges of snapshots between workers and computes the merges.

    Parameters
    ----------
    nodes : sequence of int
        The workers, in ring order.
    nbytes : int
        Bytes of one model.
    links : sequence of Link
        Each worker's links, in the order of ``nodes``.
    latency_s : float
        One-way latency of every link.
    alpha : float
        Weight of a worker's own progress since its snapshot when it merges (All-Reduce).
    keep_snapshots : bool
        False when every worker waits at its snapshot for the exchange (blocking): its
        model is then still its snapshot when it merges, so none is kept.
    """

    def __init__(
        self,
        nodes: Sequence[int],
        nbytes: int,
        links: Sequence[Link],
        latency_s: float,
        alpha: float,
        keep_snapshots: bool,
    ) -> None:
        self.nodes = list(nodes)
        self.nbytes, self.links, self.latency_s = nbytes, list(links), latency_s
        self.alpha, self.keep_snapshots = alpha, keep_snapshots
        self.outstanding = dict.fromkeys(self.nodes, 0)  # launched, not completed, per worker
        self.exchanges = 0  # completed
        self._setup()

    @abstractmethod
    def _setup(self) -> None:
        """Initialise the pattern's own state (called by ``__init__``)."""

    @abstractmethod
    def launch(self, node: int, snapshot: Arrays, now: float) -> list[tuple[float, int]]:
        """Start ``node``'s next exchange of ``snapshot``.

        Returns ``(time, token)`` of every completion this makes known (the token is
        passed to :meth:`complete` at that time).
        """

    @abstractmethod
    def complete(self, token: int) -> Completion:
        """The exchange ``token`` has finished: make its merges ready."""

    @abstractmethod
    def merge(self, node: int, model: Arrays) -> Arrays | None:
        """``model`` with every merge ready for ``node`` applied (None if none is)."""

    @abstractmethod
    def snapshots_held(self) -> int:
        """Full-model snapshots held now (running sums of an All-Reduce excluded)."""


COMMUNICATIONS: Registry[type[Communication]] = Registry("communications")


@dataclass
class _Reduction:
    total: dict[str, NDArray[np.float64]]  # running sum of the contributed snapshots
    contributed: int = 0


@COMMUNICATIONS.register("allreduce", help="ring All-Reduce of every worker's snapshot")
class RingAllReduce(Communication):
    """Average j is the mean of every worker's j-th snapshot (see the module docstring).

    With several in flight, a worker may take snapshot j before average j-1 arrives.
    Its merge of j-1 then applies to that snapshot as well (``s <- x̄ + α (s - s')``),
    or ``x - s`` would count the merge twice; the ring carries average j only after
    j-1, so every worker knows x̄_{j-1} and sends the corrected snapshot (here: the
    correction is added to the running sum when j-1 completes). The averages are then
    the means of the corrected snapshots, which is what keeps the workers' mean
    invariant at α = 1.
    """

    def _setup(self) -> None:
        self.duration_s = ring_allreduce_s(self.nbytes, self.links, self.latency_s)
        self.launched = dict.fromkeys(self.nodes, 0)
        self.reductions: dict[int, _Reduction] = {}  # open All-Reduces: a running sum each
        self.ring_free_s = 0.0
        # Per worker: snapshots of its exchanges not completed, then those completed and
        # not yet merged (with their average); together at most in_flight.
        self.snapshots: dict[int, dict[int, Arrays]] = {n: {} for n in self.nodes}
        self.ready: dict[int, list[tuple[Arrays, Arrays | None]]] = {n: [] for n in self.nodes}

    def launch(self, node: int, snapshot: Arrays, now: float) -> list[tuple[float, int]]:
        """Contribute ``node``'s next snapshot to the All-Reduce of that index."""
        self.launched[node] += 1
        self.outstanding[node] += 1
        j = self.launched[node]
        if self.keep_snapshots:
            self.snapshots[node][j] = snapshot
        r = self.reductions.setdefault(
            j, _Reduction({k: np.zeros(v.shape, np.float64) for k, v in snapshot.items()})
        )
        for k, v in snapshot.items():
            r.total[k] += v
        r.contributed += 1
        if r.contributed < len(self.nodes):
            return []
        # The last contribution: the ring runs once it is free of the previous average.
        start = max(now, self.ring_free_s)
        self.ring_free_s = start + self.duration_s
        return [(self.ring_free_s, j)]

    def complete(self, token: int) -> Completion:
        """Average ``token`` is known to every worker: its merges are ready."""
        r = self.reductions.pop(token)
        average = {k: (v / len(self.nodes)).astype(np.float32) for k, v in r.total.items()}
        for n in self.nodes:
            own = self.snapshots[n].pop(token, None)
            self.ready[n].append((average, own))
            self.outstanding[n] -= 1
            if own is None:
                continue
            for i, later in self.snapshots[n].items():  # taken before this merge
                corrected = self._merged(average, later, own)
                total = self.reductions[i].total
                for k in total:
                    total[k] += corrected[k].astype(np.float64) - later[k]
                self.snapshots[n][i] = corrected
        self.exchanges += 1
        return Completion(tuple(self.nodes), tuple(self.nodes))

    def merge(self, node: int, model: Arrays) -> Arrays | None:
        """``x <- x̄_j + α (x - s_j)`` for every ready j, in order."""
        if not self.ready[node]:
            return None
        for average, own in self.ready[node]:
            # Without a kept snapshot the worker waited at it (blocking): x = s.
            model = average if own is None else self._merged(average, model, own)
        self.ready[node] = []
        return model

    def _merged(self, average: Arrays, x: Arrays, snapshot: Arrays) -> Arrays:
        a = np.float32(self.alpha)
        return {k: average[k] + a * (x[k] - snapshot[k]) for k in x}

    def snapshots_held(self) -> int:
        """Snapshots the workers keep for merges still to come."""
        return sum(
            len(self.snapshots[n]) + sum(own is not None for _, own in self.ready[n])
            for n in self.nodes
        )


@dataclass
class _Push:
    sender: int
    receiver: int
    weight: float
    model: Arrays


@COMMUNICATIONS.register("gossip", help="SGP push-sum on the time-varying exponential graph")
class PushSumGossip(Communication):
    """Push-sum gossip (see the module docstring); alpha is not used."""

    def _setup(self) -> None:
        n = len(self.nodes)
        self.hops = [2**i for i in range(max(1, math.ceil(math.log2(n))))] if n > 1 else [0]
        self.weight = dict.fromkeys(self.nodes, 1.0)
        self.sent = dict.fromkeys(self.nodes, 0)
        self.in_transit: dict[int, _Push] = {}
        self.ready: dict[int, list[_Push]] = {n: [] for n in self.nodes}
        self._tokens = 0

    def launch(self, node: int, snapshot: Arrays, now: float) -> list[tuple[float, int]]:
        """Send half of ``node``'s push-sum mass to this exchange's peer."""
        k = self.nodes.index(node)
        hop = self.hops[self.sent[node] % len(self.hops)]
        peer = self.nodes[(k + hop) % len(self.nodes)]
        self.sent[node] += 1
        self.outstanding[node] += 1
        self.weight[node] /= 2
        mbps = min(self.links[k].uplink_mbps, self.links[self.nodes.index(peer)].downlink_mbps)
        self._tokens += 1
        self.in_transit[self._tokens] = _Push(node, peer, self.weight[node], snapshot)
        return [(now + transfer_s(self.nbytes, mbps, self.latency_s), self._tokens)]

    def complete(self, token: int) -> Completion:
        """Push ``token`` has reached its receiver."""
        push = self.in_transit.pop(token)
        self.ready[push.receiver].append(push)
        self.outstanding[push.sender] -= 1
        self.exchanges += 1
        return Completion((push.sender,), (push.receiver,))

    def merge(self, node: int, model: Arrays) -> Arrays | None:
        """``z <- (w z + w_m z_m) / (w + w_m)`` for every push received, in order."""
        if not self.ready[node]:
            return None
        for push in self.ready[node]:
            w = self.weight[node]
            total = w + push.weight
            model = {
                k: ((w * v.astype(np.float64) + push.weight * push.model[k]) / total).astype(
                    np.float32
                )
                for k, v in model.items()
            }
            self.weight[node] = total
        self.ready[node] = []
        return model

    def snapshots_held(self) -> int:
        """Models in transit."""
        return len(self.in_transit)


@dataclass(frozen=True)
class Event:
    """One entry of the :class:`EventLog` (simulated seconds).

    ``kind`` is ``compute`` (a job from ``time`` to ``end``), ``launch`` (the worker
    starts exchange ``index``), ``complete`` (one of the worker's exchanges finished),
    ``wait`` (the worker stops computing) or ``resume``.
    """

    time: float
    kind: str
    node: int
    index: int = 0
    end: float | None = None


@dataclass
class EventLog:
    """What every worker did when, on the virtual clock."""

    events: list[Event] = field(default_factory=list)

    def add(
        self, time: float, kind: str, node: int, index: int = 0, end: float | None = None
    ) -> None:
        """Append one event."""
        self.events.append(Event(time, kind, node, index, end))

    def of(self, node: int, kind: str) -> list[Event]:
        """``node``'s events of ``kind``, in order."""
        return [e for e in self.events if e.node == node and e.kind == kind]
