"""The one route to Flower's runtime: the ``flwr`` command line, in a private ``FLWR_HOME``.

``flwr`` reads SuperLink connections from ``$FLWR_HOME/config.toml``. fedsim writes one
connection (named ``fedsim``) into a temporary ``FLWR_HOME`` for each use, so the user's
own Flower configuration is never read or changed, and parses the JSON that
``flwr ... --format json`` prints. Every engine that goes through a SuperLink (a
deployment's, or the Ray engine's private simulation SuperLink) submits the one Flower
app ``fedsim/deploy/app`` with :func:`submit_run`: ``flwr run`` (the run config as a
file), ``flwr log --stream`` until the run ends, then ``flwr ls`` for its status
(``flwr log`` and ``flwr run --stream`` exit 0 even when the run failed). Every failure
is a :class:`~fedsim.errors.DeploymentError`.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedsim.apps import APP_DIR
from fedsim.deploy.flower_commands import DEFAULT_CONTROL_PORT, LOOPBACK, flower_env
from fedsim.errors import DeploymentError

CONNECTION = "fedsim"  # the connection's name inside the private FLWR_HOME
COMPLETED = "finished:completed"  # `flwr ls` status of a run that ended well
# How `flwr` reports an HTTP 403, which fedsim's SuperLink answers on its devices' port
# to anything but the Fleet API (fedsim/deploy/guarded_superlink.py).
FORBIDDEN = "Status/403"
FORBIDDEN_HINT = (
    " (that address serves SuperNodes only: submit runs and register keys on the "
    "SuperLink's host, at its Control API, by default "
    f"--superlink {LOOPBACK}:{DEFAULT_CONTROL_PORT})"
)


@dataclass(frozen=True)
class SuperLinkConnection:
    """How the ``flwr`` CLI reaches a SuperLink.

    Parameters
    ----------
    address : str
        ``HOST:PORT`` of the SuperLink's Control API.
    root_certificates : Path, optional
        CA certificate that signed the SuperLink's; None connects without TLS.
    """

    address: str
    root_certificates: Path | None = None

    def config_toml(self) -> str:
        """The ``$FLWR_HOME/config.toml`` that makes this the default connection."""
        conn: dict[str, Any] = {"address": self.address}
        if self.root_certificates is None:
            conn["insecure"] = True
        else:
            conn["root-certificates"] = str(self.root_certificates.expanduser().resolve())
        return tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}})


@contextmanager
def flwr_home(
    connection: SuperLinkConnection, extra_env: Mapping[str, str] | None = None
) -> Iterator[tuple[Path, dict[str, str]]]:
    """A temporary ``FLWR_HOME`` holding ``connection``; yields it and the environment."""
    with tempfile.TemporaryDirectory(prefix="fedsim-flwr-home-") as home:
        env = {**flower_env(), **(extra_env or {})}
        env["FLWR_HOME"] = home
        Path(home, "config.toml").write_text(connection.config_toml(), encoding="utf-8")
        yield Path(home), env


def flwr_json(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``flwr ARGS --format json`` and return its JSON answer."""
    cmd = ["flwr", *args, "--format", "json"]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise DeploymentError("the `flwr` command is not installed (pip install flwr)") from None
    start = done.stdout.find("{")
    try:
        out: dict[str, Any] = json.loads(done.stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        out = {}
    if (done.returncode != 0 and not out) or out.get("success") is False:
        detail = out.get("error-message") or (done.stderr or done.stdout).strip()
        lines = str(detail).splitlines()
        hint = FORBIDDEN_HINT if FORBIDDEN in str(detail) else ""
        raise DeploymentError(
            f"`flwr {' '.join(args[:2])}` failed: {lines[-1].strip() if lines else '?'}{hint}"
        )
    return out


def _toml(value: object) -> str:
    """A value as ``flwr``'s ``key=value`` parser reads it (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


@dataclass(frozen=True)
class SubmittedRun:
    """A run :func:`submit_run` followed to its end."""

    run_id: int
    status: str


def submit_run(
    connection: SuperLinkConnection,
    run_config: Mapping[str, Any],
    log_path: Path,
    *,
    federation_config: Mapping[str, object] | None = None,
    on_log: Callable[[str], None] | None = None,
    extra_env: Mapping[str, str] | None = None,
    app_dir: Path = APP_DIR,
) -> SubmittedRun:
    """Submit ``app_dir`` with ``run_config``, stream its log to ``log_path``, and wait.

    ``federation_config`` (``flwr run --federation-config``) sets a simulation
    SuperLink's population and Ray options; ``on_log`` receives every log line.
    Returns the run's id and final status (check it against :data:`COMPLETED`).

    Raises
    ------
    DeploymentError
        If ``flwr`` is missing, the SuperLink cannot be reached or does not start the run.
    """
    with flwr_home(connection, extra_env) as (home, env):
        overrides = home / "run-config.toml"
        overrides.write_text(tomli_w.dumps(dict(run_config)), encoding="utf-8")
        args = ["run", str(app_dir), CONNECTION, "--run-config", str(overrides)]
        if federation_config:
            fed = " ".join(f"{k}={_toml(v)}" for k, v in federation_config.items())
            args += ["--federation-config", fed]
        run_id = flwr_json(args, env).get("run-id")
        if run_id is None:
            raise DeploymentError(f"the SuperLink at {connection.address} did not start the run")
        _follow(env, int(run_id), log_path, on_log)
        return SubmittedRun(int(run_id), run_status(env, int(run_id)))


def _follow(
    env: dict[str, str], run_id: int, log_path: Path, on_log: Callable[[str], None] | None
) -> None:
    """Stream the run's log (``flwr log --stream`` returns when the run has finished)."""
    cmd = ["flwr", "log", str(run_id), CONNECTION, "--stream"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        log_path.open("w", encoding="utf-8") as log,
        subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc,
    ):
        assert proc.stdout is not None  # stdout=PIPE guarantees it
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if on_log is not None:
                on_log(line.rstrip("\n"))


def run_status(env: dict[str, str], run_id: int) -> str:
    """The status ``flwr ls`` reports for ``run_id`` (``unknown`` if it says none)."""
    runs = flwr_json(["ls", CONNECTION, "--run-id", str(run_id)], env).get("runs") or [{}]
    return str(runs[0].get("status", "unknown"))


def failure_reason(log_path: Path) -> str | None:
    """The last fedsim error the ServerApp raised, from the run's Flower log, if any.

    A refused submission (:mod:`fedsim.submission_policy`) or a bad scenario ends the
    run with a traceback there; its last line is the one-line message.
    """
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    found = [
        line.partition(": ")[2].strip()
        for line in lines
        if line.startswith("fedsim.errors.") and ": " in line
    ]
    return found[-1] if found else None


def check_completed(connection: SuperLinkConnection, run: SubmittedRun, log_path: Path) -> None:
    """Raise :class:`DeploymentError` (with the ServerApp's reason) unless ``run`` completed."""
    if run.status != COMPLETED:
        reason = failure_reason(log_path)
        raise DeploymentError(
            f"run {run.run_id} on {connection.address} ended '{run.status}'"
            + (f": {reason}" if reason else "")
            + f"; see {log_path}"
        )


def register_supernode(connection: SuperLinkConnection, public_key: Path) -> str:
    """Register a SuperNode's public key with a SuperLink that checks them; return its id."""
    with flwr_home(connection) as (_, env):
        out = flwr_json(["supernode", "register", str(public_key), CONNECTION], env)
    return str(out.get("node-id", "?"))
