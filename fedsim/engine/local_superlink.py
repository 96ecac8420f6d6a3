"""A private Flower SuperLink in simulation mode, started and stopped with all it starts.

Flower 1.41's supported way to run a ServerApp and ClientApp on its Ray simulation
engine with a full run config is ``flwr run APP_DIR CONNECTION`` against a SuperLink
started with ``flower-superlink --simulation``. This module starts one on free
loopback ports, in its own session and with its own ``FLWR_HOME``, so runs never
share state with each other or with the user's Flower set-up, and stops it with every
process it started (the SuperExec, ``flwr-simulation``, Ray's workers) afterwards.
Runs are submitted to it as to any SuperLink (:mod:`fedsim.deploy.flwr_cli`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from fedsim.deploy.flwr_cli import SuperLinkConnection
from fedsim.errors import DeploymentError

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_tool(name: str) -> str:
    """Path of a Flower console script installed beside this Python."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) of every process (Linux ``/proc``; empty elsewhere)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # Fields after the parenthesised command: state ppid pgrp session ...
            fields = stat.read_text().rsplit(")", 1)[1].split()
            table[int(stat.parent.name)] = (int(fields[1]), int(fields[3]))
    return table


def started_by(root: int) -> tuple[set[int], set[int]]:
    """Processes descended from ``root`` or sharing a session with one, and those sessions.

    Flower's SuperExec starts a session of its own, and Ray's workers outlive their
    parents for a while (re-parented to init), so a process tree alone misses some:
    the sessions catch them.
    """
    table = _process_table()
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent]
        tree.update(children)
        frontier.extend(children)
    sessions = {table[pid][1] for pid in tree if pid in table}
    return tree | {pid for pid, (_, sid) in table.items() if sid in sessions}, sessions


def leftovers(tree: set[int], sessions: set[int]) -> list[int]:
    """Processes of ``tree`` still alive, plus any process in one of ``sessions``."""
    table = _process_table()
    return sorted(pid for pid, (_, sid) in table.items() if pid in tree or sid in sessions)


def _stop_all(process: subprocess.Popen[bytes]) -> None:
    """Stop the SuperLink and everything it started (SuperExec, simulation, Ray)."""
    tree, sessions = started_by(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)  # it leads its own session and group
    for pid in tree - {process.pid}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and (process.poll() is None or leftovers(tree, sessions)):
        time.sleep(0.2)
    for pid in leftovers(tree, sessions):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_TIMEOUT_S)


def _wait_ready(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DeploymentError(f"flower-superlink exited at start-up; see {log_path}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise DeploymentError(f"flower-superlink did not listen within {STARTUP_TIMEOUT_S:.0f} s")


@contextlib.contextmanager
def local_superlink(
    home: Path, log_dir: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[SuperLinkConnection]:
    """Start a simulation-mode SuperLink with ``FLWR_HOME=home``; stop it on exit.

    ``extra_env`` reaches ``flwr-simulation`` and Ray (e.g. ``RAY_ADDRESS``). Yields the
    connection to submit runs on.
    """
    port, health = free_port(), free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **(extra_env or {}),
        "FLWR_HOME": str(home),
        # Offline machines: never pip/uv-install the app's dependencies at run time.
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        # The SuperLink launches flower-superexec and flwr-simulation by name.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "superlink.log"
    command = [
        flower_tool("flower-superlink"),
        "--insecure",  # loopback only
        "--simulation",
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--health-server-address",
        f"127.0.0.1:{health}",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_ready(process, port, log_path)
        yield SuperLinkConnection(f"127.0.0.1:{port}")
    finally:
        _stop_all(process)
