"""Who runs a dispatch's client calls: this process, or a pool of worker processes.

:class:`fedsim.engine.inprocess.InProcessGrid` decides every message's fate, copies
what it delivers and stamps every reply on the virtual clock itself, in the order the
strategy sent the messages; a :class:`ClientExecutor` only turns ``(message, node)``
jobs into replies (or the exceptions the ClientApp raised). So a run's metrics do not
depend on which executor ran it, nor on how many processes it used.

:class:`SerialExecutor` (``engine.workers: 1``) calls the ClientApp here, one job after
another, with no inter-process traffic. :class:`WorkerPool` (``engine.workers: N``)
keeps N long-lived worker processes, each a :class:`SerialExecutor` of its own (its own
ClientApp, model cache, torch threads and node Contexts); a node is pinned to one worker
(``node % N``), so its ``context.state`` lives there. A dispatch's jobs go out to all
workers at once, each worker's share in one pickled batch (the model's bytes, shared
by its messages, cross once per worker).

A worker that dies (killed, out of memory, a crashing extension) turns the jobs it had
not answered into failures (:class:`WorkerDied`, counted like any failing client); it is
restarted and its nodes go back to the states of the last checkpoint taken or restored
(:meth:`WorkerPool.node_states`), or to empty states if there was none: whatever those
nodes kept since (a DP accountant's history, an LASGD worker's model) is lost.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol, runtime_checkable

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
    UserConfig,
)

from fedsim.engine.watchdog import Watchdog
from fedsim.errors import FedsimError

ClientCallable = Callable[[Message, Context], Message]
Outcome = Message | BaseException  # a reply, or what the ClientApp raised
Job = tuple[Message, int]  # (delivered message, node id)


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


class WorkerDied(RuntimeError):
    """The worker process running a job ended before it replied."""


class WorkerStartError(FedsimError):
    """A worker process ended before it was ready (it could not import or build its app)."""


@runtime_checkable
class TrainsTogether(Protocol):
    """A client app that can also train several nodes' train messages at once.

    ``train_together(jobs, max_batch)`` returns, per ``(message, context)`` job, the
    reply the app would give it (up to float rounding) or None: run the app as usual.
    fedsim's ClientApp is one (:mod:`fedsim.clients.batched`, ``engine.batch_clients``).
    """

    def train_together(
        self, jobs: Sequence[tuple[Message, Context]], max_batch: int
    ) -> list[Message | None]:
        """Replies of the jobs trained together (None: not trained)."""


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

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
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
        The nodes' persistent Contexts (a :class:`fedsim.engine.inprocess.NodeContexts`
        builds them lazily; its ``built`` dict holds those that exist).
    watchdog : Watchdog, optional
        Abandons calls that outlast ``engine.client_timeout_s``.
    batch_clients : int
        ``engine.batch_clients``: above 0 (and without a watchdog, which times each
        client alone), a dispatch's train jobs go to the app's ``train_together`` first
        (:class:`TrainsTogether`), up to this many at a time.
    """

    def __init__(
        self,
        client_app: ClientCallable,
        contexts: Mapping[int, Context],
        watchdog: Watchdog | None = None,
        batch_clients: int = 0,
    ) -> None:
        self.client_app = client_app
        self.contexts = contexts
        self.watchdog = watchdog
        self.batch_clients = batch_clients

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Each job's reply or exception, in order."""
        return list(self.each(jobs))

    def each(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        """Yield each job's reply or exception as soon as it is done."""
        together = self._trained_together(jobs)
        for i, (message, node) in enumerate(jobs):
            ready = together.get(i)
            if ready is not None:
                yield ready
                continue
            try:
                yield self._call(message, node)
            except Exception as exc:  # a failing client never kills a run
                yield exc

    def _trained_together(self, jobs: Sequence[Job]) -> dict[int, Message]:
        """With ``batch_clients``: the replies of the train jobs the app trains together.

        Keyed by the job's position; the others run one by one through the ClientApp.
        """
        app = self.client_app
        if not self.batch_clients or self.watchdog is not None:
            return {}
        if not isinstance(app, TrainsTogether):
            return {}
        train = [i for i, (m, _) in enumerate(jobs) if m.metadata.message_type == "train"]
        if len(train) < 2:
            return {}
        replies = app.train_together(
            [(jobs[i][0], self.contexts[jobs[i][1]]) for i in train], self.batch_clients
        )
        return {i: r for i, r in zip(train, replies, strict=True) if r is not None}

    def _call(self, message: Message, node: int) -> Message:
        """Call the ClientApp for ``node``, under the watchdog when there is one."""
        context = self.contexts[node]
        # Flower's strategies share one content among a dispatch's messages; a ClientApp
        # may change what it is handed, so it gets its own containers.
        message = Message(  # type: ignore[call-overload]  # flwr's own copy path
            content=copy_content(message.content), metadata=message.metadata
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


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to run its nodes (sent once, when it starts).

    Attributes
    ----------
    client_app : object
        The ClientApp, or an :class:`AppRef` to import it by.
    num_nodes, run_config, run_id
        The population: node Contexts as :func:`fedsim.engine.inprocess.node_contexts`.
    threads : int
        ``torch.set_num_threads`` in the worker (``engine.threads_per_worker``).
    device : str, optional
        The training device this worker's clients use (``engine.device``, resolved).
    client_timeout_s : float, optional
        A watchdog inside the worker (abandons, cannot stop); the pool's own
        ``timeout_s`` kills a worker instead and leaves this None.
    environ : dict
        The parent's environment when the pool started (a forkserver's children
        inherit the server's environment, which may be older).
    batch_clients : int
        ``engine.batch_clients``: each worker trains its own nodes' train jobs together.
    """

    client_app: object
    num_nodes: int
    run_config: UserConfig
    run_id: int
    threads: int
    device: str | None
    client_timeout_s: float | None
    environ: dict[str, str]
    batch_clients: int = 0


@dataclass(frozen=True)
class AppRef:
    """A ClientApp named by module and attribute: imported in the worker, not pickled."""

    module: str
    attribute: str

    def load(self) -> ClientCallable:
        """Import the app."""
        import importlib

        return getattr(importlib.import_module(self.module), self.attribute)  # type: ignore[no-any-return]


def app_ref(client_app: object) -> object:
    """An :class:`AppRef` for ``client_app`` if a module holds it, else the app itself.

    Among the modules holding it, the shallowest outside the tests wins
    (``fedsim.clients.app:app``); the main script (``__main__``, and multiprocessing's
    alias of it, ``__mp_main__``) is never named: a worker cannot import it by that
    name. An app only the main script holds is sent pickled.
    """
    candidates = [
        (name.split(".")[0] == "tests", name.count("."), name, attr)
        for name, module in list(sys.modules.items())
        if name not in ("__main__", "__mp_main__") and module is not None
        for attr, value in list(getattr(module, "__dict__", {}).items())
        if value is client_app
    ]
    if not candidates:
        return client_app
    _, _, module, attribute = min(candidates)
    return AppRef(module, attribute)


def _worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """A worker process: run the jobs the parent sends until told to stop (or orphaned)."""
    # Ctrl-C reaches the whole process group: the parent handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.clear()
    os.environ.update(spec.environ)
    import torch

    from fedsim.engine.flower_compat import set_task_identity
    from fedsim.engine.inprocess import node_contexts
    from fedsim.training_device import set_process_device

    torch.set_num_threads(spec.threads)
    set_process_device(spec.device)
    set_task_identity(spec.run_id)
    app = spec.client_app.load() if isinstance(spec.client_app, AppRef) else spec.client_app
    if isinstance(app, Preparable):  # before "ready": start-up is not the first job's time
        app.prepare(spec.run_config)
    watchdog = None if spec.client_timeout_s is None else Watchdog(spec.client_timeout_s)
    executor = SerialExecutor(
        app,  # type: ignore[arg-type]  # a ClientApp or a test's callable
        node_contexts(spec.num_nodes, spec.run_config, spec.run_id),
        watchdog,
        spec.batch_clients,
    )
    conn.send("ready")
    while True:
        try:
            request, payload = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        try:
            if request == "run":
                for i, outcome in enumerate(executor.each(payload)):
                    conn.send_bytes(_dumps_outcome(i, outcome))
            elif request == "states":
                conn.send(executor.node_states())
            elif request == "restore":
                executor.restore_node_states(payload)
                conn.send(None)
            else:  # "stop"
                return
        except (BrokenPipeError, OSError):
            return


def _ending(code: int | None) -> str:
    """How a process ended, in words: ``was killed by SIGKILL``, ``exited with code 3``."""
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _dumps_outcome(index: int, outcome: Outcome) -> bytes:
    """Pickle a job's outcome; an exception that does not survive pickling becomes its text."""
    try:
        data = pickle.dumps((index, outcome), protocol=pickle.HIGHEST_PROTOCOL)
        if isinstance(outcome, BaseException):
            pickle.loads(data)  # some exceptions pickle but cannot be rebuilt (required args)
        return data
    except Exception:
        text = f"{type(outcome).__name__}: {outcome}"
        return pickle.dumps((index, RuntimeError(text)), protocol=pickle.HIGHEST_PROTOCOL)


def process_context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    """How fedsim starts processes: 'forkserver' where it exists, else 'spawn'.

    Never plain 'fork': torch's thread pools and CUDA do not survive a fork of a process
    that has used them. The forkserver imports ``preload`` once (torch, Flower, fedsim:
    seconds) when the first pool of this process starts it, so each process it forks
    starts in milliseconds; it lives until this process ends.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["fedsim.training_device", *preload])
    return ctx


def _context(spec: WorkerSpec) -> multiprocessing.context.BaseContext:
    """The worker's start method, preloading its ClientApp's module."""
    return process_context([spec.client_app.module] if isinstance(spec.client_app, AppRef) else [])


@contextlib.contextmanager
def main_module_hidden() -> Iterator[None]:
    """Start processes that do not re-import this program's ``__main__``.

    multiprocessing's forkserver and spawn children run the parent's main script again
    (as ``__mp_main__``) so that objects defined there unpickle; a script that calls
    ``fedsim.run`` without an ``if __name__ == "__main__":`` guard would then start a
    run in every child. fedsim's children import what they run by module name, so they
    never need the script: while this block runs, ``__main__`` names no file or module.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved: dict[str, Any] = {
        k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__
    }
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


class _Worker:
    """One worker process and the parent's end of its pipe (call :meth:`ready` next)."""

    def __init__(self, spec: WorkerSpec) -> None:
        ctx = _context(spec)
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(  # type: ignore[attr-defined]
            target=_worker_main, args=(child, spec), daemon=True, name="fedsim-worker"
        )
        # A ClientApp defined in the main script itself needs the script in the worker.
        hide = isinstance(spec.client_app, AppRef)
        with main_module_hidden() if hide else contextlib.nullcontext():
            self.process.start()
        child.close()  # only the worker holds its end: EOF here when it dies

    def ready(self) -> None:
        """Wait until the worker has built its app; raise if it died instead."""
        try:
            answer = self.conn.recv()
        except (EOFError, OSError):
            answer = None
        if answer != "ready":
            self.process.join(5)
            raise WorkerStartError(
                f"engine.workers: a worker process ended while starting (exit code "
                f"{self.process.exitcode}); its error is on stderr above"
            )

    def stop(self) -> None:
        """Ask the worker to stop; kill it if it does not within a few seconds."""
        with contextlib.suppress(OSError):  # already gone
            self.conn.send(("stop", None))
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class WorkerPool:
    """Long-lived worker processes; node ``n`` always runs on worker ``n % len(specs)``.

    With ``timeout_s``, a job still running that long after it started (its worker's
    previous reply, or the dispatch) is stopped for real: the worker process is killed,
    the job fails with :class:`~fedsim.engine.watchdog.CallTimeout`, a fresh worker
    takes the worker's nodes (their states as after :class:`WorkerDied`) and runs the
    jobs that were queued behind it. Nothing of the stopped call keeps running.

    Parameters
    ----------
    specs : sequence of WorkerSpec
        What each worker runs (one per worker; they differ in ``device`` at most).
    timeout_s : float, optional
        ``engine.client_timeout_s``: wall-clock seconds a job may take.
    """

    def __init__(self, specs: Sequence[WorkerSpec], timeout_s: float | None = None) -> None:
        if not specs:
            raise ValueError("a worker pool needs at least one worker")
        self.specs = list(specs)
        self.timeout_s = timeout_s
        self.timeouts = 0  # jobs stopped by killing their worker
        # The nodes' states as of the last checkpoint taken or restored: what a restarted
        # worker's nodes go back to.
        self.known_states: dict[int, RecordDict] = {}
        self.restarts = 0
        self.started: list[int] = []  # every worker process's id, restarted ones too
        self._workers: list[_Worker] = []
        try:
            for spec in self.specs:  # all start at once, then each is waited for
                self._workers.append(self._start(spec))
            for worker in self._workers:
                worker.ready()
        except BaseException:
            self.close()
            raise

    def _start(self, spec: WorkerSpec) -> _Worker:
        worker = _Worker(spec)
        self.started.append(worker.process.pid)
        return worker

    def owner(self, node: int) -> int:
        """The worker that runs ``node``."""
        return node % len(self._workers)

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Send each worker its share of ``jobs`` at once, then collect every outcome."""
        shares: dict[int, list[int]] = {}  # worker -> indices into jobs, in order
        for i, (_, node) in enumerate(jobs):
            shares.setdefault(self.owner(node), []).append(i)
        outcomes: list[Outcome | None] = [None] * len(jobs)
        waiting: dict[int, list[int]] = {}
        for w, indices in shares.items():
            try:
                self._workers[w].conn.send(("run", [jobs[i] for i in indices]))
                waiting[w] = indices
            except OSError:  # died between dispatches
                self._fail(w, indices, outcomes)
        remaining = {w: len(ix) for w, ix in waiting.items()}
        started = dict.fromkeys(remaining, time.monotonic())  # the current job's start
        while remaining:
            by_conn = {self._workers[w].conn: w for w in remaining}
            limit = None
            if self.timeout_s is not None:
                limit = max(
                    0.0, min(started[w] for w in remaining) + self.timeout_s - time.monotonic()
                )
            ready = wait(list(by_conn), limit)
            if not ready:  # some worker's current job has run past timeout_s
                now = time.monotonic()
                for w in [w for w in remaining if now - started[w] >= (self.timeout_s or 0)]:
                    done = len(waiting[w]) - remaining[w]
                    rest = self._stop(w, jobs, waiting[w][done], waiting[w][done + 1 :], outcomes)
                    if rest:
                        waiting[w], remaining[w], started[w] = rest, len(rest), time.monotonic()
                    else:
                        del remaining[w]
                continue
            for conn in ready:
                w = by_conn[conn]  # type: ignore[index]  # wait returns what it was given
                try:
                    local, outcome = pickle.loads(conn.recv_bytes())  # type: ignore[union-attr]
                except (EOFError, OSError):
                    done = len(waiting[w]) - remaining.pop(w)
                    self._fail(w, waiting[w][done:], outcomes)
                    continue
                outcomes[waiting[w][local]] = outcome
                remaining[w] -= 1
                started[w] = time.monotonic()  # the worker's next job starts now
                if not remaining[w]:
                    del remaining[w]
        return outcomes  # type: ignore[return-value]  # every slot is filled above

    def _stop(
        self,
        w: int,
        jobs: Sequence[Job],
        late: int,
        queued: list[int],
        outcomes: list[Outcome | None],
    ) -> list[int]:
        """Kill worker ``w`` for job ``late``; restart it with the ``queued`` jobs.

        Returns the indices the fresh worker runs (empty if it could not take them).
        """
        from fedsim.engine.watchdog import CallTimeout

        worker = self._workers[w]
        worker.process.kill()  # a thread could only be abandoned; a process really stops
        worker.process.join(5)
        worker.conn.close()
        self.timeouts += 1
        outcomes[late] = CallTimeout(f"no reply within {self.timeout_s:g} s (worker stopped)")
        self._restart(w)
        if not queued:
            return []
        try:
            self._workers[w].conn.send(("run", [jobs[i] for i in queued]))
        except OSError:
            self._fail(w, queued, outcomes)
            return []
        return queued

    def _fail(self, w: int, indices: Sequence[int], outcomes: list[Outcome | None]) -> None:
        """Worker ``w`` died: its unanswered jobs fail, and a fresh worker takes its nodes."""
        worker = self._workers[w]
        worker.process.join(5)
        how = _ending(worker.process.exitcode)
        for i in indices:
            outcomes[i] = WorkerDied(f"its worker process {how} before replying")
        worker.conn.close()
        self._restart(w)

    def _restart(self, w: int) -> None:
        """Start a fresh worker ``w``; its nodes go back to their last known states."""
        self._workers[w] = self._start(self.specs[w])
        self._workers[w].ready()
        self.restarts += 1
        mine = {n: s for n, s in self.known_states.items() if self.owner(n) == w}
        if mine:
            self._ask(w, "restore", mine)

    def _ask(self, w: int, request: str, payload: Any = None) -> Any:
        """Send worker ``w`` one request and return its answer."""
        conn = self._workers[w].conn
        conn.send((request, payload))
        return conn.recv()

    def node_states(self) -> dict[int, RecordDict]:
        """Every worker's nodes' states that hold something (taken between dispatches)."""
        states: dict[int, RecordDict] = {}
        for w in range(len(self._workers)):
            states.update(self._ask(w, "states"))
        self.known_states = dict(states)
        return states

    def restore_node_states(self, states: Mapping[int, RecordDict]) -> None:
        """Send each worker its nodes' states."""
        self.known_states = dict(states)
        for w in range(len(self._workers)):
            mine = {n: s for n, s in states.items() if self.owner(n) == w}
            if mine:
                self._ask(w, "restore", mine)

    def close(self) -> None:
        """Stop every worker process (idempotent)."""
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.stop()
