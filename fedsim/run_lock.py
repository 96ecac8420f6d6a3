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

``fedsim run`` does its run in a child of the process the user sees
(:mod:`fedsim.cli.supervisor`); the lock names the process the user sees (the one to
signal), and that child dies with it. Between the two deaths the lock is still held
for a moment, so a lock whose named holder on this host is dead is waited for, briefly.

``flock`` works on local file systems and, on Linux, on NFS (emulated with byte-range
locks); on platforms without ``fcntl`` fedsim cannot lock and says so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from fedsim.errors import RunDirectoryError
from fedsim.run_files import open_nofollow

LOCK_FILE = "run.lock"
# How long a lock whose named holder has died may stay held (its run process, killed
# with it, is still exiting: freeing a large run's memory takes a moment).
DEAD_HOLDER_WAIT_S = 10.0
_owner_pid: int | None = None


class RunDirectoryBusy(RunDirectoryError):
    """Another live run holds the run directory's lock."""


def name_owner(pid: int | None) -> None:
    """Name ``pid`` instead of this process in the locks it takes (None: this process).

    The supervised child of ``fedsim run`` names its supervisor, the process the user
    started and sees.
    """
    global _owner_pid
    _owner_pid = pid


def _holder(path: Path) -> dict[str, object] | None:
    """The holder's entry, as it wrote it (it may be mid-write: retry briefly)."""
    for _ in range(20):
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(info, dict) and {"pid", "host", "started"} <= info.keys():
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return None


def _holder_text(info: dict[str, object] | None) -> str:
    """Who holds the lock, in words."""
    if info is None:
        return "a process that has not said who it is"
    return f"pid {info['pid']} on {info['host']}, started {info['started']}"


def _died_here(info: dict[str, object] | None) -> bool:
    """Whether the holder named in ``info`` ran on this host and is gone."""
    if info is None or info["host"] != socket.gethostname() or not isinstance(info["pid"], int):
        return False
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def _locked(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` if no one holds it; whether it was taken."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


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
        if importlib.util.find_spec("fcntl") is None:  # Windows
            raise RunDirectoryError("fedsim needs fcntl (Linux, macOS) to lock run directories")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirectoryError(f"cannot create run directory {self.run_dir}: {exc}") from None
        # Never through a link: a planted run.lock -> ~/.bashrc would be truncated.
        fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
        if not _locked(fd):
            holder = _holder(self.path)
            # A dead supervisor's run process lets go in a moment: wait for that only.
            until = time.monotonic() + (DEAD_HOLDER_WAIT_S if _died_here(holder) else 0.0)
            while not _locked(fd):
                if time.monotonic() >= until:
                    os.close(fd)
                    raise RunDirectoryBusy(
                        f"{self.run_dir} is in use by another run ({_holder_text(holder)}); "
                        "wait for it to end or choose another --out"
                    ) from None
                time.sleep(0.02)
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        pid = os.getpid() if _owner_pid is None else _owner_pid
        info = {"pid": pid, "host": socket.gethostname(), "started": started}
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
