"""A private Flower SuperLink in simulation mode, and ``flwr run`` against it.

Flower 1.41's supported way to run a ServerApp and ClientApp on its Ray simulation
engine with a full run config is ``flwr run APP_DIR CONNECTION`` against a SuperLink
started with ``flower-superlink --simulation``. This module starts one on free
loopback ports, in its own session and with its own ``FLWR_HOME``, so runs never
share state with each other or with the user's Flower set-up, and stops it with every
process it started (the SuperExec, ``flwr-simulation``, Ray's workers) afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from fedsim.errors import FedsimError

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


class EngineRunError(FedsimError):
    """The engine could not run the apps to completion (the message says why)."""


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


@dataclass(frozen=True)
class SuperLink:
    """A running SuperLink: the ``flwr`` connection name and environment to reach it."""

    connection: str
    env: Mapping[str, str]
    log_path: Path


def _write_connection(home: Path, name: str, port: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n'
        f'[superlink.{name}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n',
        encoding="utf-8",
    )


def _wait_ready(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EngineRunError(f"flower-superlink exited at start-up; see {log_path}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise EngineRunError(f"flower-superlink did not listen within {STARTUP_TIMEOUT_S:.0f} s")


@contextlib.contextmanager
def local_superlink(
    home: Path, log_dir: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[SuperLink]:
    """Start a simulation-mode SuperLink with ``FLWR_HOME=home``; stop it on exit.

    ``extra_env`` reaches ``flwr-simulation`` and Ray (e.g. ``RAY_ADDRESS``).
    """
    port, health = free_port(), free_port()
    name = "fedsim"
    _write_connection(home, name, port)
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
        yield SuperLink(name, env, log_path)
    finally:
        _stop_all(process)


def flwr_run(
    link: SuperLink, app_dir: Path, federation_config: Mapping[str, object], log_path: Path
) -> None:
    """``flwr run APP_DIR`` on ``link``, streaming until the run ends; raise if it failed."""
    overrides = " ".join(f"{k}={_toml(v)}" for k, v in federation_config.items())
    command = [
        flower_tool("flwr"),
        "run",
        str(app_dir),
        link.connection,
        "--federation-config",
        overrides,
        "--stream",
    ]
    with log_path.open("wb") as log:
        done = subprocess.run(command, env=dict(link.env), stdout=log, stderr=subprocess.STDOUT)
    output = log_path.read_text(encoding="utf-8", errors="replace")
    started = re.search(r"Successfully started run (\d+)", output)
    if done.returncode != 0 or started is None:
        raise EngineRunError(f"flwr run failed (exit {done.returncode}); see {log_path}")
    status, details = run_status(link, int(started.group(1)))
    if status != "finished:completed":
        raise EngineRunError(f"Flower run {status}: {details}; see {log_path}")


def run_status(link: SuperLink, run_id: int) -> tuple[str, str]:
    """The status and details ``flwr ls`` reports for ``run_id``."""
    command = [flower_tool("flwr"), "ls", link.connection, "--run-id", str(run_id)]
    done = subprocess.run(
        [*command, "--format", "json"], env=dict(link.env), capture_output=True, text=True
    )
    try:
        runs = json.loads(done.stdout)["runs"]
        return str(runs[0]["status"]), str(runs[0].get("status-details", ""))
    except (ValueError, KeyError, IndexError):
        return "unknown", done.stdout.strip() or done.stderr.strip()


def _toml(value: object) -> str:
    """A value as ``flwr``'s ``key=value`` parser reads it (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))
