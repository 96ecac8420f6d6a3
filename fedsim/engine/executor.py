"""Who runs a dispatch's client calls: this process, or a pool of worker processes.

:class:`fedsim.engine.inprocess_grid.InProcessGrid` decides every message's fate, copies
what it delivers and stamps every reply on the virtual clock itself, in the order the
strategy sent the messages; a :class:`ClientExecutor` only turns ``(message, node)``
jobs into replies (or the exceptions the ClientApp raised). So a run's metrics do not
depend on which executor ran it, nor on how many processes it used.

:class:`SerialExecutor` (``engine.workers: 1``) calls the ClientApp here, one job after
another, with no inter-process traffic. :class:`~fedsim.engine.workers.WorkerPool`
(``engine.workers: N``) keeps N long-lived worker processes, each a
:class:`SerialExecutor` of its own (its own
ClientApp, model cache, torch threads and node Contexts); a node is pinned to one worker
(``node % N``), so its ``context.state`` lives there. A dispatch's jobs go out to all
workers at once, each worker's share in one pickled batch (the model's bytes, shared
by its messages, cross once per worker).

A worker that dies (killed, out of memory, a crashing extension) turns the jobs it had
not answered into failures (:class:`WorkerDied`, counted like any failing client); it is
restarted and its nodes go back to the states of the last checkpoint taken or restored
(:meth:`~fedsim.engine.workers.WorkerPool.node_states`), or to empty states if there was
none: whatever those nodes kept since (a DP accountant's history, an LASGD worker's model) is lost.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
    UserConfig,
)

from fedsim import wire
from fedsim.engine.watchdog import Watchdog
from fedsim.errors import FedsimError
from fedsim.process_note import NO_ROUND, ProcessNote
from fedsim.reply_chunk import ReplyChunk, TrainedTogether

ClientCallable = Callable[[Message, Context], Message]
Outcome = Message | BaseException  # a reply, or what the ClientApp raised
Job = tuple[Message, int]  # (message, node id); the executor copies what a ClientApp gets


@dataclass
class Outcomes:
    """A dispatch's outcomes: ``each[i]`` is job ``i``'s.

    ``chunks`` hold the stacked replies among them as columns
    (:class:`~fedsim.reply_chunk.ReplyChunk`, jobs by position).
    """

    each: list[Outcome]
    chunks: list[ReplyChunk] = field(default_factory=list)


def copy_content(content: RecordDict) -> RecordDict:
    """Copy the record containers a client could mutate (arrays are immutable bytes).

    Flower's strategies put one shared ``RecordDict`` into every message; transports
    serialise it, so in-process each node needs its own containers.
    """
    out = RecordDict()
    for key, record in content.items():
        # Records' own shallow copy skips the per-item type checks that filling a new
        # record repeats (1.6 vs 19 µs for four arrays, flwr 1.41); the values are
        # immutable bytes and numbers, except a config's or metric's lists.
        if isinstance(record, ArrayRecord):
            out[key] = record.copy()
        elif isinstance(record, ConfigRecord | MetricRecord):
            out[key] = _with_own_lists(record)
    return out


def _with_own_lists(record: ConfigRecord | MetricRecord) -> ConfigRecord | MetricRecord:
    """A shallow copy of ``record`` with copies of its list values."""
    copied = record.copy()
    for name, value in copied.items():
        if isinstance(value, list):
            copied[name] = value.copy()  # type: ignore[assignment]  # same type as before
    return copied


def server_round(message: Message) -> int:
    """The round a message's config names (Flower's strategies set ``server-round``).

    :data:`~fedsim.process_note.NO_ROUND` when it names none (an asynchronous
    strategy's messages). Looked up by key: ``content.config_records`` builds a view
    of every record (24 against 1.6 µs, flwr 1.41).
    """
    config = message.content.get(wire.CONFIG)
    value = config.get(wire.SERVER_ROUND) if isinstance(config, ConfigRecord) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else NO_ROUND


# ``engine.batch_clients: auto`` on its way to the app: the app sizes each chunk itself.
AUTO_BATCH = -1


class WorkerDied(RuntimeError):
    """The worker process running a job ended before it replied."""


class WorkerStartError(FedsimError):
    """A worker process ended before it was ready (it could not import or build its app)."""


@runtime_checkable
class TrainsTogether(Protocol):
    """A client app that can also train several nodes' train messages at once.

    ``train_together(jobs, max_batch)`` returns, per ``(message, context)`` job, the
    reply the app would give it (up to float rounding) or None: run the app as usual;
    and the stacked replies as columns too.
    fedsim's ClientApp is one (:mod:`fedsim.client.stacked`, ``engine.batch_clients``).
    """

    def train_together(
        self, jobs: Sequence[tuple[Message, Context]], max_batch: int
    ) -> TrainedTogether:
        """Replies of the jobs trained together (None: not trained), with their chunks."""


@runtime_checkable
class Preparable(Protocol):
    """A client app that can do its process-wide set-up before the first job.

    ``prepare(run_config)`` loads what every node of this process shares (the scenario,
    the dataset): a worker calls it before it reports ready, so a client's time limit
    counts the client's own work, not the process's start-up.
    """

    def prepare(self, run_config: UserConfig) -> None:
        """Load what the process's nodes share."""


class ClientExecutor(Protocol):
    """Runs a dispatch's client calls; owns the nodes' ``Context`` states."""

    def run(self, jobs: Sequence[Job]) -> Outcomes:
        """Each job's reply or the exception its ClientApp raised, in the order of ``jobs``."""

    def node_states(self) -> dict[int, RecordDict]:
        """Every node's ``context.state`` that holds something (for a checkpoint)."""

    def restore_node_states(self, states: Mapping[int, RecordDict]) -> None:
        """Put back what :meth:`node_states` returned (a resumed run)."""

    def close(self) -> None:
        """Release what the executor holds (worker processes); idempotent."""


class SerialExecutor:
    """Call the ClientApp in this process, one job after another.

    Parameters
    ----------
    client_app : callable
        ``ClientApp`` (or any ``(Message, Context) -> Message`` callable).
    contexts : mutable mapping of node id to Context
        The nodes' persistent Contexts (a :class:`fedsim.engine.inprocess_grid.NodeContexts`
        builds them lazily; its ``built`` dict holds those that exist).
    watchdog : Watchdog, optional
        Abandons calls that outlast ``engine.client_timeout_s``.
    batch_clients : int
        ``engine.batch_clients``: above 0 (and without a watchdog, which times each
        client alone), a dispatch's train jobs go to the app's ``train_together`` first
        (:class:`TrainsTogether`), up to this many at a time.
    note : ProcessNote, optional
        Where to note each client call before making it (:mod:`fedsim.process_note`):
        the clients run in this process, so one that kills it can still be named.
    """

    def __init__(
        self,
        client_app: ClientCallable,
        contexts: Mapping[int, Context],
        watchdog: Watchdog | None = None,
        batch_clients: int = 0,
        note: ProcessNote | None = None,
    ) -> None:
        self.client_app = client_app
        self.contexts = contexts
        self.watchdog = watchdog
        self.batch_clients = batch_clients
        self.note = note

    def run(self, jobs: Sequence[Job]) -> Outcomes:
        """Each job's reply or exception, in order, and the stacked chunks among them."""
        together = self._trained_together(jobs)
        if all(r is not None for r in together.replies):  # every job trained together
            return Outcomes(list(together.replies), together.chunks)  # type: ignore[arg-type]
        return Outcomes(list(self._each(jobs, together.replies)), together.chunks)

    def each(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        """Yield each job's reply or exception as soon as it is done."""
        return self._each(jobs, self._trained_together(jobs).replies)

    def _each(self, jobs: Sequence[Job], together: Sequence[Message | None]) -> Iterator[Outcome]:
        """Each job's reply: trained together already, or from the ClientApp now."""
        note = self.note
        # A dispatch's messages belong to one round (the note only names it).
        dispatch_round = server_round(jobs[0][0]) if note is not None and jobs else NO_ROUND
        for (message, node), ready in zip(jobs, together, strict=True):
            if ready is not None:
                yield ready
                continue
            if note is not None:
                note.client_call(node, dispatch_round, message.metadata.message_type)
            try:
                outcome: Outcome = self._call(message, node)
            except Exception as exc:  # a failing client never kills a run
                outcome = exc
            if note is not None:
                note.server_work()
            yield outcome

    def _trained_together(self, jobs: Sequence[Job]) -> TrainedTogether:
        """With ``batch_clients``: the train jobs the app trains together, by job position.

        The others (None) run one by one through the ClientApp.
        """
        app = self.client_app
        alone = TrainedTogether([None] * len(jobs))
        if not self.batch_clients or self.watchdog is not None:
            return alone
        if not isinstance(app, TrainsTogether):
            return alone
        train = [i for i, (m, _) in enumerate(jobs) if m.metadata.message_type == "train"]
        if len(train) < 2:
            return alone
        first, node = jobs[train[0]]
        if self.note is not None:
            self.note.client_call(node, server_round(first), "train", nodes=len(train))
        try:
            together = app.train_together(
                [(jobs[i][0], self.contexts[jobs[i][1]]) for i in train], self.batch_clients
            )
        finally:
            if self.note is not None:
                self.note.server_work()
        for i, reply in zip(train, together.replies, strict=True):
            alone.replies[i] = reply
        alone.chunks = [chunk.at(train) for chunk in together.chunks]
        return alone

    def _call(self, message: Message, node: int) -> Message:
        """Call the ClientApp for ``node``, under the watchdog when there is one."""
        context = self.contexts[node]
        # Flower's strategies share one content among a dispatch's messages; a ClientApp
        # may change what it is handed, so it gets its own containers and metadata.
        message = Message(  # type: ignore[call-overload]  # flwr's own copy path
            content=copy_content(message.content), metadata=copy.copy(message.metadata)
        )
        if self.watchdog is None:
            return self.client_app(message, context)
        # An abandoned call keeps running and may still write to the state it was
        # given: the node goes on with a copy of its state from before the call.
        before = copy_content(context.state)
        try:
            return self.watchdog.call(lambda: self.client_app(message, context))
        except TimeoutError:
            self._replace_context(node, before)
            raise

    def _replace_context(self, node: int, state: RecordDict) -> None:
        """Give ``node`` a new Context (same configs) holding ``state``."""
        old = self.contexts[node]
        new = Context(old.run_id, old.node_id, dict(old.node_config), state, dict(old.run_config))
        self._contexts_dict()[node] = new

    def _contexts_dict(self) -> MutableMapping[int, Context]:
        """The dict that holds the built Contexts (a lazy mapping's ``built``)."""
        built = getattr(self.contexts, "built", None)
        return built if built is not None else self.contexts  # type: ignore[return-value]

    def node_states(self) -> dict[int, RecordDict]:
        """States of the nodes that keep something: most of a large population never trains."""
        return {n: c.state for n, c in list(self._contexts_dict().items()) if len(c.state)}

    def restore_node_states(self, states: Mapping[int, RecordDict]) -> None:
        """Put ``states`` into the nodes' Contexts."""
        for node, state in states.items():
            self.contexts[node].state = state

    def close(self) -> None:
        """Nothing to release."""


# ------------------------------------------------------------------ worker pool
