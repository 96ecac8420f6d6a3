"""Flower command lines built by fedsim, checked against Flower's own parsers."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from fedsim.deploy.flower_commands import (
    ServerCertificates,
    flower_env,
    node_config,
    superlink_command,
    superlink_env,
    supernode_command,
)
from fedsim.errors import DeploymentError
from fedsim.submission_policy import ALLOW_ENV, RUNS_ROOT_ENV, SubmissionPolicy


def _value(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_insecure_superlink_installs_nothing_at_run_time() -> None:
    cmd = superlink_command(host="0.0.0.0", port=9100, certificates=None)
    assert cmd[:3] == [sys.executable, "-m", "fedsim.deploy.guarded_superlink"]
    assert _value(cmd, "--fleet") == "0.0.0.0:9100"
    # Flower itself serves on the control address: loopback unless the operator asks.
    flower = cmd[cmd.index("--") + 1 :]
    assert flower[:4] == ["--host", "127.0.0.1", "--port", "9091"]
    assert "--insecure" in cmd and "--disable-runtime-dependency-installation" in cmd


def test_fleet_and_control_ports_must_differ() -> None:
    with pytest.raises(DeploymentError, match="must differ"):
        superlink_command(host="0.0.0.0", port=9100, certificates=None, control_port=9100)


def test_every_flower_flag_is_one_flower_superlink_accepts() -> None:
    """The flags after ``--`` parse with Flower's own argument parser."""
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink

    cmd = superlink_command(
        host="::", port=9100, certificates=None, database=Path("s.db"), control_port=9101
    )
    assert _value(cmd, "--fleet") == "[::]:9100"
    args = _parse_args_run_superlink().parse_args(cmd[cmd.index("--") + 1 :])
    assert (args.host, args.port, args.insecure, args.database) == ("127.0.0.1", 9101, True, "s.db")


def test_the_superlinks_environment_carries_the_policy_and_no_legacy_grpc(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FLWR_INTERNAL_GRPC_CONTROL_API", "1")
    env = superlink_env(SubmissionPolicy(frozenset({"imports"}), tmp_path))
    assert "FLWR_INTERNAL_GRPC_CONTROL_API" not in env
    assert SubmissionPolicy.from_environ(env) == SubmissionPolicy(
        frozenset({"imports"}), tmp_path.resolve()
    )
    # What the operator's shell holds never widens what the command line says.
    monkeypatch.setenv(ALLOW_ENV, "imports,run-dir,resume")
    monkeypatch.setenv(RUNS_ROOT_ENV, "/")
    assert SubmissionPolicy.from_environ(superlink_env(SubmissionPolicy())) == SubmissionPolicy()


def test_tls_superlink_takes_the_generated_files(tmp_path: Path) -> None:
    for name in ("ca.crt", "server.pem", "server.key"):
        (tmp_path / name).write_text("x")
    certs = ServerCertificates.from_dir(tmp_path)
    cmd = superlink_command(host="h", port=1, certificates=certs, supernode_auth=True)
    assert "--insecure" not in cmd and "--enable-supernode-auth" in cmd
    assert _value(cmd, "--ssl-ca-certfile") == str(tmp_path / "ca.crt")
    assert _value(cmd, "--ssl-certfile") == str(tmp_path / "server.pem")
    assert _value(cmd, "--ssl-keyfile") == str(tmp_path / "server.key")


def test_missing_certificate_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("x")
    with pytest.raises(DeploymentError, match=r"server\.pem.*server\.key"):
        ServerCertificates.from_dir(tmp_path)


def test_node_config_reads_back_through_flowers_parser(tmp_path: Path) -> None:
    data = tmp_path / "partition-2.npz"
    parsed = parse_config_args([node_config(2, 5, data)])
    assert parsed == {"partition-id": 2, "num-partitions": 5, "data-path": str(data.resolve())}
    assert parse_config_args([node_config(0, 1, None)]) == {"partition-id": 0, "num-partitions": 1}


@pytest.mark.parametrize(("pid", "n"), [(3, 3), (-1, 3)])
def test_partition_outside_the_population_is_refused(pid: int, n: int) -> None:
    with pytest.raises(DeploymentError, match="--partition-id"):
        node_config(pid, n, None)


def test_data_path_that_flower_would_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match="--data-path"):
        node_config(0, 2, tmp_path / "my data.npz")


def test_supernode_command_with_tls_and_auth(tmp_path: Path) -> None:
    cmd = supernode_command(
        superlink="10.0.0.1:9093",
        partition_id=1,
        num_partitions=4,
        port=9200,
        root_certificates=tmp_path / "ca.crt",
        auth_private_key=tmp_path / "node-1",
    )
    assert cmd[0] == "flower-supernode" and "--insecure" not in cmd
    assert _value(cmd, "--superlink") == "10.0.0.1:9093" and _value(cmd, "--port") == "9200"
    assert _value(cmd, "--root-certificates") == str(tmp_path / "ca.crt")
    assert _value(cmd, "--auth-supernode-private-key") == str(tmp_path / "node-1")
    assert _value(cmd, "--node-config") == "partition-id=1 num-partitions=4"


def test_flower_processes_find_this_environments_scripts() -> None:
    env = flower_env({"PATH": "/usr/bin"})
    assert env["PATH"].split(os.pathsep) == [sysconfig.get_path("scripts"), "/usr/bin"]
