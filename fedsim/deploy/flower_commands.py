"""Command lines of Flower's deployment processes, built from fedsim's options.

Pure functions: they return argv lists, so the CLI can print them (``--dry-run``) and
tests can check them without starting anything. Flower 1.41 flags, checked with
``--help``: ``flower-superlink`` serves its Fleet, Control and ServerApp (Runtime) APIs
on one HTTP port (``--control-api-address`` is deprecated and ignored), so fedsim
starts it through :mod:`fedsim.deploy.guarded_superlink`, which adds a Fleet-only
listener for the devices; each SuperNode serves a runtime API for its ClientApp
processes on a local port of its own.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from fedsim import wire
from fedsim.config.schema import DEVICE_PATTERN
from fedsim.errors import DeploymentError
from fedsim.submission_policy import SubmissionPolicy

DEFAULT_SUPERLINK_PORT = 9093  # the Fleet API: what SuperNodes connect to
DEFAULT_CONTROL_PORT = 9091  # Control and Runtime APIs: flwr run/register, ServerApps
DEFAULT_NODE_PORT = 9094  # flower-supernode's default runtime API port
LOOPBACK = "127.0.0.1"
GUARDED_SUPERLINK = "fedsim.deploy.guarded_superlink"
# Flower starts legacy gRPC Control/Fleet servers on addresses of their own when these
# are "1"; fedsim's SuperLink never passes them on.
FLOWER_LEGACY_GRPC_ENV = ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API")


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
    control_host: str = LOOPBACK,
    control_port: int = DEFAULT_CONTROL_PORT,
) -> list[str]:
    """Flower's SuperLink with SuperNodes on ``host:port`` and everything else on control.

    Runs ``flower-superlink`` through :mod:`fedsim.deploy.guarded_superlink`: Flower
    serves all its APIs on ``control_host:control_port`` (loopback by default), and
    ``host:port`` answers only the Fleet API. Insecure when ``certificates`` is None.
    Runtime dependency installation is always off: the app bundle names no
    dependencies (fedsim is installed on every machine) and devices may be offline.
    """
    if port == control_port:  # the fleet-only listener is told apart by its port
        raise DeploymentError(f"--port and --control-port must differ (both {port})")
    cmd = [sys.executable, "-m", GUARDED_SUPERLINK, "--fleet", join_address(host, port), "--"]
    cmd += ["--host", control_host, "--port", str(control_port)]
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


def join_address(host: str, port: int) -> str:
    """``HOST:PORT``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def node_config(
    partition_id: int, num_partitions: int, data_path: Path | None, device: str | None = None
) -> str:
    """The ``--node-config`` string: fedsim's partition keys, optional data file and device."""
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
    if device is not None:
        if not DEVICE_PATTERN.fullmatch(device):
            raise DeploymentError(f"--device '{device}': choose auto, cpu, cuda, cuda:N or mps")
        parts.append(f"{wire.NODE_DEVICE}='{device}'")
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
    device: str | None = None,
) -> list[str]:
    """``flower-supernode`` for one partition; insecure when ``root_certificates`` is None."""
    cmd = ["flower-supernode", "--superlink", superlink, "--port", str(port)]
    cmd += ["--node-config", node_config(partition_id, num_partitions, data_path, device)]
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


def superlink_env(policy: SubmissionPolicy) -> dict[str, str]:
    """The SuperLink's environment: :func:`flower_env` plus the operator's policy.

    Its ServerApp processes inherit it, and read what submitted runs may do from it
    (:mod:`fedsim.submission_policy`); Flower's legacy gRPC servers stay off.
    """
    env = flower_env()
    for name in FLOWER_LEGACY_GRPC_ENV:
        env.pop(name, None)
    env.update(policy.environ())
    return env
