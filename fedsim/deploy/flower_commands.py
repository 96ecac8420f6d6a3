"""Command lines of Flower's deployment processes, built from fedsim's options.

Pure functions: they return argv lists, so the CLI can print them (``--dry-run``) and
tests can check them without starting anything. Flower 1.41 flags, checked with
``--help``: the SuperLink serves its Fleet, Control and ServerApp APIs on one HTTP
port; each SuperNode serves a runtime API for its ClientApp processes on a local port
of its own.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from fedsim import wire
from fedsim.errors import DeploymentError

DEFAULT_SUPERLINK_PORT = 9093
DEFAULT_NODE_PORT = 9094  # flower-supernode's default runtime API port


@dataclass(frozen=True)
class ServerCertificates:
    """A SuperLink's TLS files, as ``deploy/certificates/generate.sh`` names them."""

    ca: Path
    certificate: Path
    key: Path

    @classmethod
    def from_dir(cls, folder: Path) -> ServerCertificates:
        """Take ``ca.crt``, ``server.pem`` and ``server.key`` from ``folder``."""
        certs = cls(folder / "ca.crt", folder / "server.pem", folder / "server.key")
        missing = [str(p) for p in (certs.ca, certs.certificate, certs.key) if not p.is_file()]
        if missing:
            raise DeploymentError(f"--certificates: missing {', '.join(missing)}")
        return certs


def superlink_command(
    *,
    host: str,
    port: int,
    certificates: ServerCertificates | None,
    supernode_auth: bool = False,
    database: Path | None = None,
) -> list[str]:
    """``flower-superlink`` serving ``host:port``; insecure when ``certificates`` is None.

    Runtime dependency installation is always off: the app bundle names no
    dependencies (fedsim is installed on every machine) and devices may be offline.
    """
    cmd = ["flower-superlink", "--host", host, "--port", str(port)]
    cmd.append("--disable-runtime-dependency-installation")
    if certificates is None:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(certificates.ca)]
        cmd += ["--ssl-certfile", str(certificates.certificate)]
        cmd += ["--ssl-keyfile", str(certificates.key)]
    if supernode_auth:
        cmd.append("--enable-supernode-auth")
    if database is not None:
        cmd += ["--database", str(database)]
    return cmd


def node_config(partition_id: int, num_partitions: int, data_path: Path | None) -> str:
    """The ``--node-config`` string: fedsim's partition keys and the optional data file."""
    if not 0 <= partition_id < num_partitions:
        raise DeploymentError(
            f"--partition-id {partition_id} must lie in 0..{num_partitions - 1} (--num-partitions)"
        )
    parts = [f"{wire.PARTITION_ID}={partition_id}", f"{wire.NUM_PARTITIONS}={num_partitions}"]
    if data_path is not None:
        text = str(data_path.expanduser().resolve())
        if "'" in text or " " in text:  # Flower splits the string on spaces; TOML literal
            raise DeploymentError(f"--data-path: no spaces or quotes, please: {text!r}")
        parts.append(f"{wire.DATA_PATH}='{text}'")
    return " ".join(parts)


def supernode_command(
    *,
    superlink: str,
    partition_id: int,
    num_partitions: int,
    port: int = DEFAULT_NODE_PORT,
    data_path: Path | None = None,
    root_certificates: Path | None = None,
    auth_private_key: Path | None = None,
) -> list[str]:
    """``flower-supernode`` for one partition; insecure when ``root_certificates`` is None."""
    cmd = ["flower-supernode", "--superlink", superlink, "--port", str(port)]
    cmd += ["--node-config", node_config(partition_id, num_partitions, data_path)]
    if root_certificates is None:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(root_certificates)]
    if auth_private_key is not None:
        cmd += ["--auth-supernode-private-key", str(auth_private_key)]
    return cmd


def flower_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower's processes: this interpreter's scripts first on PATH.

    SuperLink and SuperNode start ``flower-superexec``/``flwr-clientapp`` by name, so
    they must find the ones installed beside fedsim even when the virtual environment
    is not activated (a systemd unit calling ``.venv/bin/fedsim``).
    """
    env = dict(os.environ if base is None else base)
    scripts = sysconfig.get_path("scripts") or str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")]).rstrip(os.pathsep)
    return env
