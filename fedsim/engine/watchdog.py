"""A wall-clock limit on calls that may never return (a hung in-process client).

A Python thread cannot be killed, so a call that outlasts its limit is abandoned: it
keeps running on its own daemon thread (using CPU until it ends, never blocking the
interpreter's exit) and its result is thrown away; the next call starts a fresh
worker thread. Calls run one at a time on one long-lived worker, so what a client
keeps per thread (fedsim's model cache) survives between calls.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class CallTimeout(TimeoutError):
    """The call did not return within the limit (it was abandoned, not stopped)."""


@dataclass
class _Job(Generic[T]):
    fn: Callable[[], T]
    done: threading.Event = field(default_factory=threading.Event)
    result: T | None = None
    error: BaseException | None = None


class Watchdog:
    """Run calls on a worker thread, giving up on any that takes over ``limit_s`` seconds.

    Parameters
    ----------
    limit_s : float
        Wall-clock seconds a call may take.
    """

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.abandoned = 0  # calls given up on (their threads may still be running)
        self._jobs: queue.SimpleQueue[_Job[object] | None] | None = None

    def call(self, fn: Callable[[], T]) -> T:
        """Return ``fn()``, or raise :class:`CallTimeout` once ``limit_s`` has passed.

        Exceptions ``fn`` raises are raised here.
        """
        if self._jobs is None:
            self._jobs = queue.SimpleQueue()
            threading.Thread(target=_work, args=(self._jobs,), daemon=True).start()
        job: _Job[T] = _Job(fn)
        self._jobs.put(job)  # type: ignore[arg-type]  # the worker does not look at T
        if not job.done.wait(self.limit_s):
            self._jobs.put(None)  # the worker stops once (if ever) the hung call returns
            self._jobs = None
            self.abandoned += 1
            raise CallTimeout(f"no reply within {self.limit_s:g} s")
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]  # set when error is None


def _work(jobs: queue.SimpleQueue[_Job[object] | None]) -> None:
    while (job := jobs.get()) is not None:
        try:
            job.result = job.fn()
        except BaseException as exc:  # handed to the caller, raised there
            job.error = exc
        job.done.set()
