"""LASGD: decentralised SGD whose model averaging overlaps computation, on the virtual clock.

Seed: Avidor & Tal Israel, "Locally Asynchronous Stochastic Gradient Descent for
Decentralised Deep Learning" (arXiv 2203.13085): workers synchronise their models with
All-Reduce but never stop computing for it. The full paper's update rule could not be
consulted; what follows is fedsim's reconstruction (docs/strategies.md says which parts).

Every worker (client) computes without pause, one local job (``client.local_steps``
steps; 1 in the shipped scenarios) per message. Every ``period`` jobs it takes a
snapshot s and launches a non-blocking exchange of it (:mod:`.decentralised`: a ring
All-Reduce, or push-sum gossip for the baseline), at most ``in_flight`` at a time; it
waits only when it would exceed that. When the All-Reduce completes, the worker merges
``x <- x̄ + α (x - s)`` at the end of the job it is computing. ``in_flight: 0`` blocks
at every snapshot: with ``period: 1`` that is synchronous All-Reduce SGD, with a longer
period synchronous local SGD.

The strategy is the simulator: it keeps a copy of every worker's model (its last
job's reply, for the merges and the central evaluation), lets the in-process clock
time each job's compute (messages flagged ``local-compute``: the server-worker
messages carry no simulated traffic) and times the exchanges itself from the
devices' links. Its memory: one model per worker, at most ``in_flight`` snapshots per
worker, one running sum per open All-Reduce.

Client contract
---------------
``train.lasgd`` messages carry config ``server-round`` (the worker's job number: it
seeds the job's batches), ``lasgd-scale`` a and ``local-compute``, plus an ArrayRecord
b. The worker sets ``x <- a*x + b`` (a = 0: x = b, its merged model; a = 1 and b
empty: keep computing on its own x), runs its local steps with its kept optimizer
state (momentum persists, never averaged), keeps x in ``context.state`` and replies
with x and the usual train metrics.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedsim import wire
from fedsim.algorithms.lasgd import LASGDParams, keys
from fedsim.algorithms.lasgd.communication import (
    COMMUNICATIONS,
    Arrays,
    Communication,
    EventLog,
    mean_model,
)
from fedsim.config.schema import Scenario
from fedsim.engine.protocols import VirtualClockGrid
from fedsim.errors import Problem
from fedsim.outputs.own_models import OwnModels
from fedsim.strategies import register_strategy

logger = logging.getLogger(__name__)

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


@dataclass
class _Worker:
    jobs: int = 0  # completed
    job: str | None = None  # message id of the job it is computing
    content: RecordDict | None = None  # that job's message (sent again if it fails)
    started_s: float = 0.0
    waiting: bool = False
    launched: int = 0  # exchanges started
    completed: int = 0  # exchanges finished
    changed: bool = True  # its model here differs from the one it keeps: send it


@dataclass
class _Run:
    """The state of one run (what :meth:`LASGD.start` builds)."""

    grid: Grid
    clock: VirtualClockGrid  # the same grid, seen for its clock
    comm: Communication
    base: ConfigRecord
    models: dict[int, Arrays]
    workers: dict[int, _Worker]
    log: EventLog = field(default_factory=EventLog)
    events: list[tuple[float, int, int]] = field(default_factory=list)  # (time, seq, token)
    jobs: dict[str, int] = field(default_factory=dict)  # message id -> worker
    max_snapshots: int = 0
    seq: int = 0


@register_strategy("lasgd")
class LASGD(Strategy):
    """Decentralised local SGD whose model exchanges overlap computation.

    Parameters
    ----------
    alpha : float
        α in ``x <- x̄ + α (x - s)``; 1 keeps the mean of the worker models invariant.
    period : int
        H: local jobs between two snapshots.
    in_flight : int
        Exchanges a worker may have under way; 0 waits for each (synchronous).
    communication : str
        ``allreduce`` (LASGD) or ``gossip`` (push-sum baseline), see
        :mod:`fedsim.algorithms.lasgd.communication`.
    eval_interval_s : float
        Simulated seconds between central evaluations; the run stops after
        ``rounds`` of them (the simulated-time budget is ``rounds * eval_interval_s``).
    """

    @classmethod
    def check(cls, scenario: Scenario, params: Mapping[str, Any]) -> list[Problem]:
        """LASGD runs without lost replies (its spec asks for the virtual clock).

        A dropped reply never arrives, so its worker would wait for it for the rest of
        the run (measured: 2 of 4 workers computed nothing after one dropout each) and
        the average would keep its stale model. Failures are fine: the failed job is sent
        again (the worker ran nothing, so keeps nothing).
        """
        problems = []
        lost = "a dropped reply never arrives and its lasgd worker would stop for good"
        if scenario.system.dropout_prob > 0:
            reason = f"must be 0 with lasgd: {lost}; system.failure_prob models faults"
            problems.append(Problem("system.dropout_prob", reason))
        if scenario.system.trace is not None:
            reason = f"cannot be used with lasgd: a device going offline drops replies; {lost}"
            problems.append(Problem("system.trace", reason))
        return problems

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        period: int = 5,
        in_flight: int = 1,
        communication: str = "allreduce",
        eval_interval_s: float = 10.0,
    ) -> None:
        LASGDParams.checked(
            alpha=alpha,
            period=period,
            in_flight=in_flight,
            communication=communication,
            eval_interval_s=eval_interval_s,
        )
        self.communication = COMMUNICATIONS.get(communication)
        self.alpha, self.period, self.in_flight = alpha, period, in_flight
        self.eval_interval_s = eval_interval_s
        self.sim: _Run | None = None  # the last run's state, kept for inspection (tests)

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
        """Run the workers for ``num_rounds * eval_interval_s`` simulated seconds.

        Central evaluation of the mean worker model at time 0 and every
        ``eval_interval_s`` (as "round" 0, 1, ...). ``timeout`` has no meaning on a
        virtual clock; a failed job (error reply) is sent again.
        """
        if not isinstance(grid, VirtualClockGrid):
            raise TypeError("lasgd runs on the virtual clock: use engine.name: inprocess")
        self.summary()
        nodes = sorted(grid.get_node_ids())
        initial = {k: v.numpy() for k, v in initial_arrays.items()}
        comm = self.communication(
            nodes,
            sum(v.nbytes for v in initial.values()),
            [grid.device(n) for n in nodes],
            grid.latency_s,
            self.alpha,
            keep_snapshots=self.in_flight > 0,
        )
        base = ConfigRecord() if train_config is None else train_config
        run = self.sim = _Run(
            grid, grid, comm, base, dict.fromkeys(nodes, initial), {n: _Worker() for n in nodes}
        )
        result = Result(arrays=initial_arrays)
        _evaluate(evaluate_fn, 0, initial_arrays, result)
        t0 = grid.virtual_time_s
        for node in nodes:
            self._dispatch(run, node)
        for e in range(1, num_rounds + 1):
            self._advance(run, t0 + e * self.eval_interval_s)
            result.arrays = ArrayRecord(
                {k: Array(v) for k, v in mean_model(list(run.models.values())).items()}
            )
            _evaluate(evaluate_fn, e, result.arrays, result)
        busy = sum(e.end - e.time for e in run.log.events if e.kind == "compute" and e.end)
        elapsed = len(nodes) * (grid.virtual_time_s - t0)
        logger.info(
            "LASGD: %d exchanges, %d jobs, workers computing %.0f%% of the time",
            comm.exchanges,
            sum(w.jobs for w in run.workers.values()),
            100 * busy / elapsed if elapsed else 0.0,
        )
        return result

    # ------------------------------------------------------------ the event loop

    def _advance(self, run: _Run, until_s: float) -> None:
        """Process job replies and exchange completions, in time order, up to ``until_s``."""
        grid = run.clock
        while True:
            next_event = run.events[0][0] if run.events else float("inf")
            horizon = min(next_event, until_s)
            replies = grid.pull_messages_until(list(run.jobs), horizon)
            if replies:  # replies at or before the next exchange event come first
                for reply in replies:
                    self._job_done(run, reply)
                continue
            if next_event > until_s:
                return
            while run.events and run.events[0][0] == next_event:
                _, _, token = heapq.heappop(run.events)
                self._exchange_done(run, token, next_event)

    def _job_done(self, run: _Run, reply: Message) -> None:
        node = run.jobs.pop(reply.metadata.reply_to_message_id)
        worker = run.workers[node]
        if reply.has_error():  # the worker kept nothing: send the job again
            self._push(run, node)
            return
        now = run.clock.virtual_time_s
        run.log.add(worker.started_s, "compute", node, worker.jobs + 1, end=now)
        worker.jobs += 1
        worker.job = None
        snapshot = reply.content.array_records[wire.ARRAYS]
        run.models[node] = {k: v.numpy() for k, v in snapshot.items()}
        worker.changed = False
        self._merge(run, node)  # averages that completed during the job land now
        if worker.jobs % self.period == 0:
            self._exchange(run, node, now)
        if not worker.waiting:
            self._dispatch(run, node)

    def _exchange(self, run: _Run, node: int, now: float) -> None:
        """Launch ``node``'s exchange of its current model, or wait if it may not yet."""
        worker, comm = run.workers[node], run.comm
        if self.in_flight and comm.outstanding[node] >= self.in_flight:
            worker.waiting = True  # launches when one completes (see _exchange_done)
            run.log.add(now, "wait", node)
            return
        worker.launched += 1
        run.log.add(now, "launch", node, worker.launched)
        for time, token in comm.launch(node, run.models[node], now):
            heapq.heappush(run.events, (time, run.seq, token))
            run.seq += 1
        run.max_snapshots = max(run.max_snapshots, comm.snapshots_held())
        if not self.in_flight:  # blocking: wait for this exchange
            worker.waiting = True
            run.log.add(now, "wait", node)

    def _exchange_done(self, run: _Run, token: int, now: float) -> None:
        done = run.comm.complete(token)
        for node in done.senders:
            run.workers[node].completed += 1
            run.log.add(now, "complete", node, run.workers[node].completed)
        for node in sorted(set(done.senders) | set(done.receivers)):
            worker = run.workers[node]
            if not worker.waiting:
                continue  # computing: merges at the end of its job
            self._merge(run, node)
            outstanding = run.comm.outstanding[node]
            if self.in_flight and outstanding < self.in_flight:
                worker.waiting = False
                run.log.add(now, "resume", node)
                self._exchange(run, node, now)  # the snapshot it waited to send
            elif not self.in_flight and outstanding == 0:
                worker.waiting = False
                run.log.add(now, "resume", node)
            if not worker.waiting:
                self._dispatch(run, node)

    def _merge(self, run: _Run, node: int) -> None:
        merged = run.comm.merge(node, run.models[node])
        if merged is not None:
            run.models[node] = merged
            run.workers[node].changed = True

    # ------------------------------------------------------------------ messages

    def _dispatch(self, run: _Run, node: int) -> None:
        """Start ``node``'s next job on its current model."""
        worker = run.workers[node]
        config = ConfigRecord(dict(run.base))
        config[wire.SERVER_ROUND] = worker.jobs + 1
        config[keys.LASGD_SCALE] = 0.0 if worker.changed else 1.0
        config[wire.LOCAL_COMPUTE] = True
        model = run.models[node] if worker.changed else {}
        arrays = ArrayRecord({k: Array(v) for k, v in model.items()})
        worker.content = RecordDict({wire.ARRAYS: arrays, wire.CONFIG: config})
        worker.started_s = run.clock.virtual_time_s
        self._push(run, node)

    @staticmethod
    def _push(run: _Run, node: int) -> None:
        worker = run.workers[node]
        assert worker.content is not None
        message = Message(worker.content, node, f"train.{keys.LASGD_ACTION}")
        (message_id,) = run.grid.push_messages([message])
        worker.job = message_id
        run.jobs[message_id] = node

    def own_models(self) -> OwnModels:
        """The workers' own models, as level 1: scored as ``gen_accuracy_l1``.

        Each evaluation scores the mean worker model (``eval_accuracy``) and, through
        this, every worker's own model on the central test set (their mean accuracy):
        a decentralised method deploys a worker's model, not the average nobody holds.
        Only the server's test set is read, so nothing about a worker's data is scored.
        """
        if self.sim is None:
            return OwnModels(levels={}, clients={})
        workers = [
            ArrayRecord({k: Array(v) for k, v in self.sim.models[n].items()})
            for n in sorted(self.sim.models)
        ]
        return OwnModels(levels={1: workers}, clients={})

    # Flower's round hooks: LASGD has no rounds; start() sends and merges by itself.

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Not used: jobs are sent per worker by :meth:`start`."""
        return []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Not used: the exchanges merge models as they complete."""
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
            "LASGD: alpha=%s, period=%s, in_flight=%s, communication=%s, eval_interval_s=%s",
            self.alpha,
            self.period,
            self.in_flight,
            self.communication.__name__,
            self.eval_interval_s,
        )


def _evaluate(fn: EvaluateFn | None, index: int, arrays: ArrayRecord, result: Result) -> None:
    if fn is None:
        return
    metrics = fn(index, arrays)
    if metrics is not None:
        result.evaluate_metrics_serverapp[index] = metrics
