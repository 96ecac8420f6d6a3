"""A SuperLink and SuperNodes on loopback, started by id and stopped by id.

Every process starts in a session of its own; Flower's own children (``flower-superexec``,
``flwr-serverapp``, ``flwr-clientapp``; the SuperLink's superexec detaches into yet
another session) are found through ``/proc`` parent links, so teardown can stop all of
them and then check that none is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROC = Path("/proc")


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it for a socket bound to port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.connect(("127.0.0.1", port))
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s} s")


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process."""
    out: dict[int, int] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                # "pid (comm) state ppid ...": comm may hold spaces, so split after ")".
                out[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not count)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants(roots: set[int]) -> set[int]:
    """Every live descendant of ``roots`` (not the roots themselves)."""
    parents = _parents()
    found: set[int] = set()
    frontier = set(roots)
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


@dataclass
class Cluster:
    """Processes of one loopback deployment; :meth:`stop_all` ends every one of them."""

    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)  # every pid ever observed: checked at the end

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        home = self.workdir / "flwr-home" / name  # each process its own FLWR_HOME
        home.mkdir(parents=True, exist_ok=True)
        # FEDSIM_ALLOW_ROOT: CI's containers run as root, where `fedsim deploy` would
        # refuse to start (tests/cli/test_deploy_cmd.py checks that refusal).
        full_env = {**os.environ, "FEDSIM_ALLOW_ROOT": "1", **(env or {}), "FLWR_HOME": str(home)}
        log = (self.workdir / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()  # the child holds its own descriptor
        self.seen.add(self.procs[name].pid)

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def stop(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to one process, its process group and all its descendants."""
        self._signal({self.procs[name].pid}, sig)

    def stop_all(self, grace_s: float = 10.0) -> set[int]:
        """Stop every process (TERM, then KILL after ``grace_s``); return survivors."""
        self._signal({p.pid for p in self.procs.values()}, signal.SIGTERM)
        self._wait_gone(grace_s)
        self._signal(self._alive(), signal.SIGKILL)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)  # reap our own children
        self._wait_gone(5.0)  # orphans are reaped by init a moment after they die
        return self._alive()

    def _alive(self) -> set[int]:
        return {p for p in self.seen if is_alive(p)}

    def _wait_gone(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._alive():
            # A parent that dies hands its children to init: record them while linked.
            self.seen |= descendants(self._alive())
            time.sleep(0.2)

    def _signal(self, roots: set[int], sig: signal.Signals) -> None:
        """Signal ``roots`` (and their process groups) and every descendant."""
        # Snapshot the tree first: once a parent dies its children are re-parented.
        tree = descendants(roots)
        self.seen |= roots | tree
        for pid in roots:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
        for pid in roots | tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def metrics_records(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run directory's ``metrics.jsonl`` (empty while there is none)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def cluster(workdir: Path) -> Iterator[Cluster]:
    """A :class:`Cluster` whose processes are all stopped (and checked) on exit."""
    c = Cluster(workdir)
    try:
        yield c
    finally:
        survivors = c.stop_all()
        assert not survivors, f"processes left running: {sorted(survivors)}"
