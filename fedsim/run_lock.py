"""One run per run directory: an exclusive lock held for the run's whole life.

``run.lock`` in the run directory is locked with ``flock(LOCK_EX | LOCK_NB)`` before
fedsim looks at what the directory holds, so checking and claiming it are one atomic
step: of two runs started together into one directory, exactly one gets it and the
other fails at once, naming the holder (pid, host, start time, written into the file
by whoever holds the lock). The kernel drops the lock when its process ends, however
it ends (SIGKILL, a crash, a power cut), so a lock left by a dead run is never stale:
the next run takes it and writes itself in. A ``run.lock`` that is a symbolic link is
refused (``O_NOFOLLOW``), never written through. The file stays behind on purpose (removing
it would let a second run lock a new file while a third still waits on the old one).

``flock`` works on local file systems and, on Linux, on NFS (emulated with byte-range
locks); on platforms without ``fcntl`` fedsim cannot lock and says so.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from fedsim.errors import RunDirectoryError
from fedsim.run_files import open_nofollow

LOCK_FILE = "run.lock"


class RunDirectoryBusy(RunDirectoryError):
    """Another live run holds the run directory's lock."""


def _holder_text(path: Path) -> str:
    """Who holds the lock, as its holder wrote it (it may be mid-write: retry briefly)."""
    for _ in range(20):
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on {info['host']}, started {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "a process that has not said who it is"


class RunLock:
    """The exclusive lock on a run directory (a context manager).

    Parameters
    ----------
    run_dir : Path
        The run directory (created if missing).
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunDirectoryBusy` naming who has it."""
        try:
            import fcntl
        except ImportError:  # Windows
            raise RunDirectoryError(
                "fedsim needs fcntl (Linux, macOS) to lock run directories"
            ) from None
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirectoryError(f"cannot create run directory {self.run_dir}: {exc}") from None
        # Never through a link: a planted run.lock -> ~/.bashrc would be truncated.
        fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunDirectoryBusy(
                f"{self.run_dir} is in use by another run ({_holder_text(self.path)}); "
                "wait for it to end or choose another --out"
            ) from None
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (closing the file does; the file itself stays)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
