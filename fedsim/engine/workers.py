"""Long-lived worker processes that run a dispatch's client calls (``engine.workers: N``).

:class:`WorkerPool` keeps N worker processes, each a
:class:`~fedsim.engine.executor.SerialExecutor` of its own (its own ClientApp, model
cache, torch threads and node Contexts); a node is pinned to one worker (``node % N``),
so its ``context.state`` lives there. See :mod:`fedsim.engine.executor` for what a
worker that dies turns into.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from flwr.app import (
    RecordDict,
    UserConfig,
)

from fedsim.engine.executor import (
    ClientCallable,
    Job,
    Outcome,
    Outcomes,
    Preparable,
    SerialExecutor,
    WorkerDied,
    WorkerStartError,
)
from fedsim.engine.process_start import main_module_hidden, process_context
from fedsim.engine.watchdog import Watchdog
from fedsim.process_note import process_ending

__all__ = ["AppRef", "WorkerPool", "WorkerSpec", "app_ref", "main_module_hidden", "process_context"]


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to run its nodes (sent once, when it starts).

    Attributes
    ----------
    client_app : object
        The ClientApp, or an :class:`AppRef` to import it by.
    num_nodes, run_config, run_id
        The population: node Contexts as :func:`fedsim.engine.inprocess_grid.node_contexts`.
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
    (``fedsim.client.app:app``); the main script (``__main__``, and multiprocessing's
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
    from fedsim.engine.inprocess_grid import node_contexts
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


def _context(spec: WorkerSpec) -> multiprocessing.context.BaseContext:
    """The worker's start method, preloading its ClientApp's module."""
    return process_context([spec.client_app.module] if isinstance(spec.client_app, AppRef) else [])


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

    def run(self, jobs: Sequence[Job]) -> Outcomes:
        """Send each worker its share of ``jobs`` at once, then collect every outcome.

        Replies come back one by one (no chunk columns): the engine checks them singly.
        """
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
        return Outcomes(outcomes)  # type: ignore[arg-type]  # every slot is filled above

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
        how = process_ending(worker.process.exitcode)
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
