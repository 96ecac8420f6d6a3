"""The ``flwr`` command line as fedsim uses it: a private ``FLWR_HOME`` per call.

``flwr`` reads SuperLink connections from ``$FLWR_HOME/config.toml``. fedsim writes one
connection (named ``fedsim``) into a temporary ``FLWR_HOME`` for each command, so the
user's own Flower configuration is never read or changed, and parses the JSON that
``flwr ... --format json`` prints.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedsim.deploy.flower_commands import DEFAULT_CONTROL_PORT, LOOPBACK, flower_env
from fedsim.errors import DeploymentError

CONNECTION = "fedsim"  # the connection's name inside the private FLWR_HOME
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
        ``HOST:PORT`` of the SuperLink.
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
def flwr_home(connection: SuperLinkConnection) -> Iterator[tuple[Path, dict[str, str]]]:
    """A temporary ``FLWR_HOME`` holding ``connection``; yields it and the environment."""
    with tempfile.TemporaryDirectory(prefix="fedsim-flwr-home-") as home:
        env = flower_env()
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


def register_supernode(connection: SuperLinkConnection, public_key: Path) -> str:
    """Register a SuperNode's public key with a SuperLink that checks them; return its id."""
    with flwr_home(connection) as (_, env):
        out = flwr_json(["supernode", "register", str(public_key), CONNECTION], env)
    return str(out.get("node-id", "?"))
