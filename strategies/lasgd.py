"""LASGD: local SGD whose model averaging overlaps computation, on the virtual clock.

Seed: "Locally Asynchronous Stochastic Gradient Descent for Decentralised Deep
Learning" (Edgify, arXiv 2203.13085): keep All-Reduce model averaging, but never block
local computation on it. The paper's exact merge rule is not public in the sources we
read; what follows is fedsim's construction (docs/strategies.md has the derivation).

Workers are the clients. Each runs blocks of H local steps (``client.local_steps``),
one ``train.lasgd`` message per block; the block's reply is its snapshot s_{k,j}.
Average j, x̄_j = mean_k ŝ_{k,j}, completes when the last worker's j-th snapshot
arrives; it reaches each worker with the worker's next block message, and the worker
merges ``x <- x̄_j + α (x - ŝ_{k,j})`` before computing on. ŝ is the snapshot as if every
earlier average had been merged before it was taken: a worker that ran ahead took
snapshot j before merging x̄_{j-1}, and without the correction the x - s term would add
that earlier merge a second time (the workers then never agree, even at η = 0). With
α = 1 every merge of x̄_j moves the workers by x̄_j - ŝ_{k,j}, which sums to zero: the
mean of the worker models is invariant. A worker may run ``staleness`` blocks past its
last merged average, then waits; ``staleness=0`` is the τ = 0 limit, synchronous
model averaging (local SGD; with one local step, FedAvg on equal shards).

Client contract
---------------
``train.lasgd`` messages carry config ``server-round`` (the block number: it seeds the
worker's batches as a round number seeds FedAvg's) and ``lasgd-scale`` a, plus an
ArrayRecord b, empty when no average arrived. The worker sets ``x <- a*x + b`` (x = b
when a = 0, its first block), runs its local steps on x, keeps x in ``context.state``
and replies with x and the usual train metrics. The server sends the merge in this
affine form, composed over every average that reaches the worker at once, because it
alone knows each worker's corrected snapshots; the worker keeps only its model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from numpy.typing import NDArray

from fedsim import wire
from fedsim.strategies import register_strategy

logger = logging.getLogger(__name__)

Arrays = dict[str, NDArray[np.float32]]  # one model: parameter name -> array
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


@runtime_checkable
class VirtualClockGrid(Protocol):
    """A grid with simulated time (fedsim's in-process engine)."""

    @property
    def virtual_time_s(self) -> float:
        """Simulated seconds since the run started."""

    def pull_messages_until(self, message_ids: Iterable[str], until_s: float) -> list[Message]:
        """Pull replies, never moving simulated time past ``until_s``."""


def mean_model(models: list[Arrays]) -> Arrays:
    """Uniform mean of models (accumulated in float64, returned in their dtype)."""
    return {
        k: np.asarray(np.mean(np.stack([m[k] for m in models]), axis=0, dtype=np.float64)).astype(
            v.dtype
        )
        for k, v in models[0].items()
    }


@dataclass
class _Worker:
    blocks: int = 0  # snapshots received
    sent: int = -1  # last average sent to it (-1: not started; 0 is the initial model)
    pending: dict[int, Arrays] = field(default_factory=dict)  # block -> ŝ, average not formed
    offsets: dict[int, Arrays] = field(default_factory=dict)  # average -> its b, not sent yet


class SnapshotAverager:
    """The server's side of LASGD's All-Reduce: snapshots in, merges out.

    Parameters
    ----------
    nodes : iterable of int
        The workers (every average needs a snapshot from each).
    initial : dict of str to ndarray
        The model every worker starts from (average 0).
    alpha : float
        Weight of a worker's own progress since its snapshot when it merges.
    """

    def __init__(self, nodes: Iterable[int], initial: Arrays, alpha: float) -> None:
        self.alpha = alpha
        self.initial = initial
        self.workers = {n: _Worker() for n in sorted(nodes)}
        self.completed = 0  # index of the newest average
        self.average = initial  # x̄_completed
        self.lags: list[int] = []  # blocks a worker ran between a snapshot and its merge

    def _map(self, offset: Arrays, z: Arrays) -> Arrays:
        return {k: self.alpha * v + offset[k] for k, v in z.items()}

    def add_snapshot(self, node: int, snapshot: Arrays, through: int) -> list[int]:
        """Record ``node``'s next snapshot, taken with averages up to ``through`` merged.

        Returns the indices of the averages this snapshot completes (possibly none).
        """
        w = self.workers[node]
        w.blocks += 1
        for i in range(through + 1, self.completed + 1):  # formed, not yet merged by it
            snapshot = self._map(w.offsets[i], snapshot)
        w.pending[w.blocks] = snapshot
        done = []
        while all(v.blocks > self.completed for v in self.workers.values()):
            done.append(self._complete())
        return done

    def _complete(self) -> int:
        j = self.completed + 1
        snapshots = [w.pending.pop(j) for w in self.workers.values()]
        average = mean_model(snapshots)
        for w, s in zip(self.workers.values(), snapshots, strict=True):
            # x̄ + α(z - ŝ) = αz + b: the merge as an affine map, applied to the worker's
            # later snapshots now (they were taken before it) and to its model on delivery.
            b = {k: average[k] - self.alpha * s[k] for k in average}
            w.offsets[j] = b
            w.pending = {m: self._map(b, z) for m, z in w.pending.items()}
        self.completed, self.average = j, average
        return j

    def lag(self, node: int) -> int:
        """Blocks ``node`` has finished beyond the newest average."""
        return self.workers[node].blocks - self.completed

    def take_merge(self, node: int) -> tuple[float, Arrays | None, int]:
        """The merge for ``node``'s next block: ``(a, b, through)`` with ``x <- a*x + b``.

        Composes every formed average not yet sent to ``node`` and marks them sent;
        ``through`` is the newest average merged before the block. ``b`` is None when
        nothing arrived (``a`` is then 1); the first block gets ``(0, initial, 0)``.
        """
        w = self.workers[node]
        if w.sent < 0:
            w.sent = 0
            return 0.0, self.initial, 0
        scale, offset = 1.0, None
        for i in range(w.sent + 1, self.completed + 1):
            b = w.offsets.pop(i)
            self.lags.append(w.blocks - i)
            scale *= self.alpha
            offset = b if offset is None else self._map(b, offset)
        w.sent = self.completed
        return scale, offset, w.sent

    def consensus(self) -> Arrays:
        """The mean worker model as far as the server knows.

        Each worker's newest snapshot with every formed average merged into it (the
        newest average itself if that snapshot is part of it): what a final All-Reduce
        would return if every worker stopped at its last snapshot.
        """
        return mean_model(
            [
                w.pending[w.blocks] if w.blocks > self.completed else self.average
                for w in self.workers.values()
            ]
        )


@dataclass(frozen=True)
class _Block:
    node: int
    through: int
    content: RecordDict


@register_strategy("lasgd")
class LASGD(Strategy):
    """Locally asynchronous SGD: workers never wait for an average unless too stale.

    Parameters
    ----------
    alpha : float
        α in ``x <- x̄ + α (x - ŝ)``; 1 keeps the mean of the worker models invariant.
    staleness : int or None
        Blocks a worker may run past its last merged average before it waits; 0 is
        synchronous model averaging, None never waits.
    eval_interval_s : float
        Simulated seconds between central evaluations; the run stops after
        ``rounds`` of them (the simulated-time budget is ``rounds * eval_interval_s``).
    """

    def __init__(
        self, *, alpha: float = 1.0, staleness: int | None = None, eval_interval_s: float = 10.0
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if staleness is not None and staleness < 0:
            raise ValueError(f"staleness must be >= 0 or null (never wait), got {staleness}")
        if eval_interval_s <= 0:
            raise ValueError(f"eval_interval_s must be > 0, got {eval_interval_s}")
        self.alpha, self.staleness, self.eval_interval_s = alpha, staleness, eval_interval_s
        self.averager: SnapshotAverager | None = None

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
    ) -> Result:
        """Run workers for ``num_rounds * eval_interval_s`` simulated seconds.

        Central evaluation of :meth:`SnapshotAverager.consensus` at time 0 and every
        ``eval_interval_s`` (as "round" 0, 1, ...). ``timeout`` has no meaning on a
        virtual clock; a failed block (error reply) is sent again.
        """
        if not isinstance(grid, VirtualClockGrid):
            raise TypeError("lasgd runs on the virtual clock: use engine.name: inprocess")
        self.summary()
        base = ConfigRecord() if train_config is None else train_config
        initial = {k: v.numpy() for k, v in initial_arrays.items()}
        averager = self.averager = SnapshotAverager(grid.get_node_ids(), initial, self.alpha)
        result = Result(arrays=initial_arrays)
        _evaluate(evaluate_fn, 0, initial_arrays, result)
        inflight: dict[str, _Block] = {}
        idle = set(averager.workers)
        t0 = grid.virtual_time_s
        for e in range(1, num_rounds + 1):
            until = t0 + e * self.eval_interval_s
            while True:
                self._dispatch(grid, averager, idle, inflight, base)
                replies = grid.pull_messages_until(list(inflight), until)
                if not replies:
                    break
                for reply in replies:
                    block = inflight.pop(reply.metadata.reply_to_message_id)
                    if reply.has_error():  # the worker kept nothing: send the block again
                        self._push(grid, block, inflight)
                        continue
                    snapshot = reply.content.array_records[wire.ARRAYS]
                    averager.add_snapshot(
                        block.node, {k: v.numpy() for k, v in snapshot.items()}, block.through
                    )
                    idle.add(block.node)
            result.arrays = ArrayRecord({k: Array(v) for k, v in averager.consensus().items()})
            _evaluate(evaluate_fn, e, result.arrays, result)
        lag = float(np.mean(averager.lags)) if averager.lags else 0.0
        logger.info("LASGD: %d averages, mean lag %.2f blocks", averager.completed, lag)
        return result

    def _dispatch(
        self,
        grid: Grid,
        averager: SnapshotAverager,
        idle: set[int],
        inflight: dict[str, _Block],
        base: ConfigRecord,
    ) -> None:
        """Start the next block on every idle worker the staleness bound lets go."""
        for node in sorted(idle):
            if self.staleness is not None and averager.lag(node) > self.staleness:
                continue  # waits for an average
            idle.discard(node)
            scale, offset, through = averager.take_merge(node)
            config = ConfigRecord(dict(base))
            config[wire.SERVER_ROUND] = averager.workers[node].blocks + 1
            config[wire.LASGD_SCALE] = scale
            arrays = ArrayRecord({k: Array(v) for k, v in (offset or {}).items()})
            content = RecordDict({wire.ARRAYS: arrays, wire.CONFIG: config})
            self._push(grid, _Block(node, through, content), inflight)

    @staticmethod
    def _push(grid: Grid, block: _Block, inflight: dict[str, _Block]) -> None:
        message = Message(block.content, block.node, f"train.{wire.LASGD_ACTION}")
        (message_id,) = grid.push_messages([message])
        inflight[message_id] = block

    # Flower's round hooks: LASGD has no rounds; start() sends and merges by itself.

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Not used: blocks are sent per worker by :meth:`start`."""
        return []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Not used: :class:`SnapshotAverager` averages snapshots as they arrive."""
        return None, None

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: the server evaluates centrally."""
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """No federated evaluation."""
        return None

    def summary(self) -> None:
        """Log the parameters."""
        logger.info(
            "LASGD: alpha=%s, staleness=%s, eval_interval_s=%s",
            self.alpha,
            self.staleness,
            self.eval_interval_s,
        )


def _evaluate(fn: EvaluateFn | None, index: int, arrays: ArrayRecord, result: Result) -> None:
    if fn is None:
        return
    metrics = fn(index, arrays)
    if metrics is not None:
        result.evaluate_metrics_serverapp[index] = metrics
