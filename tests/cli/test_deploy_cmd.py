"""``fedsim deploy``: command lines, user errors (exit 2, one line), the data split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedsim.cli.main import app
from tests.conftest import write_yaml

NODE = ["node", "--partition-id", "0", "--num-partitions", "2", "--superlink", "127.0.0.1:9093"]


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["deploy", *args])


@pytest.fixture(autouse=True)
def _as_a_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as an unprivileged user whoever runs the tests (CI's containers are root)."""
    monkeypatch.setattr("fedsim.deploy.exposure.os.geteuid", lambda: 1000)
    monkeypatch.delenv("FEDSIM_ALLOW_ROOT", raising=False)


@pytest.mark.parametrize("command", [["superlink", "--insecure"], [*NODE, "--insecure"]])
def test_both_deploy_commands_refuse_root_unless_the_operator_insists(
    monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setattr("fedsim.deploy.exposure.os.geteuid", lambda: 0)
    refused = _invoke(*command, "--dry-run")
    assert refused.exit_code == 2
    assert refused.output.startswith("error: refusing to start:") and "as root" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    insisted = _invoke(*command, "--allow-root", "--dry-run")
    assert insisted.exit_code == 0, insisted.output
    assert "warning:" in insisted.output and "as root" in insisted.output
    monkeypatch.setenv("FEDSIM_ALLOW_ROOT", "1")
    assert _invoke(*command, "--dry-run").exit_code == 0


def test_a_node_refuses_insecure_to_a_remote_superlink_unless_told() -> None:
    remote = [
        "node",
        "--partition-id",
        "0",
        "--num-partitions",
        "2",
        "--superlink",
        "10.0.0.2:9093",
    ]
    refused = _invoke(*remote, "--insecure", "--dry-run")
    assert refused.exit_code == 2 and "refusing --insecure to 10.0.0.2:9093" in refused.output
    told = _invoke(*remote, "--insecure", "--i-understand-the-risks", "--dry-run")
    assert told.exit_code == 0 and "warning: --insecure to 10.0.0.2:9093" in told.output
    assert _invoke(*NODE, "--insecure", "--dry-run").exit_code == 0  # loopback: no risk


def test_superlink_trusts_fedsims_own_app_and_what_the_operator_names(tmp_path: Path) -> None:
    from fedsim.deploy.trusted_apps import app_folder_hash

    own = app_folder_hash()
    default = _invoke("superlink", "--insecure", "--dry-run")
    assert f"--trusted-app {own} --max-body {32 * 2**20} --" in default.output
    other = "cd" * 32
    more = _invoke("superlink", "--insecure", "--trust-app", other, "--dry-run")
    assert own in more.output and other in more.output
    anyone = _invoke("superlink", "--insecure", "--trust-any-app", "--dry-run")
    assert "--any-app" in anyone.output and "--trusted-app" not in anyone.output
    bad = _invoke("superlink", "--insecure", "--trust-app", str(tmp_path / "nope"), "--dry-run")
    assert bad.exit_code == 2 and "64 hex digits" in bad.output


def test_node_dry_run_prints_the_supernode_command(tmp_path: Path) -> None:
    result = _invoke(
        "node", "--partition-id", "2", "--num-partitions", "3", "--superlink", "10.0.0.2:9093",
        "--port", "9300", "--insecure", "--i-understand-the-risks",
        "--data-path", str(tmp_path / "p.npz"), "--dry-run",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "flower-supernode --superlink 10.0.0.2:9093 --port 9300" in result.output
    assert "partition-id=2 num-partitions=3 data-path=" in result.output


def test_superlink_needs_a_tls_choice() -> None:
    result = _invoke("superlink", "--dry-run")
    assert result.exit_code == 2
    assert result.output.strip() == "error: choose --insecure or TLS certificates (exactly one)"
    ok = _invoke("superlink", "--insecure", "--port", "9555", "--dry-run")
    assert ok.exit_code == 0, ok.output
    assert "guarded_superlink --fleet 127.0.0.1:9555 --trusted-app" in ok.output
    assert "-- --host 127.0.0.1 --port 9091" in ok.output


def test_superlink_open_to_the_network_needs_the_risk_flag(tmp_path: Path) -> None:
    """Each risk Flower cannot prevent is named; the flag (or fixing it) starts it."""
    for name in ("ca.crt", "server.pem", "server.key"):
        (tmp_path / name).write_text("x")
    certs = ["--certificates", str(tmp_path)]
    cases = {
        ("--insecure",): ["without TLS", "without --supernode-auth"],
        (*certs,): ["without --supernode-auth"],
        (*certs, "--supernode-auth", "--control-host", "0.0.0.0"): ["the Control API on 0.0.0.0"],
    }
    for extra, risks in cases.items():
        refused = _invoke("superlink", "--host", "0.0.0.0", *extra, "--dry-run")
        assert refused.exit_code == 2, refused.output
        assert all(r in refused.output for r in risks), refused.output
        assert "--i-understand-the-risks" in refused.output
        accepted = _invoke(
            "superlink", "--host", "0.0.0.0", *extra, "--i-understand-the-risks", "--dry-run"
        )
        assert accepted.exit_code == 0, accepted.output
    locked = _invoke("superlink", "--host", "0.0.0.0", *certs, "--supernode-auth", "--dry-run")
    assert locked.exit_code == 0, locked.output
    loopback = _invoke("superlink", "--insecure", "--dry-run")
    assert loopback.exit_code == 0, loopback.output


def test_unknown_submitted_run_permission_is_one_line() -> None:
    result = _invoke("superlink", "--insecure", "--allow-submitted", "pickles", "--dry-run")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --allow-submitted: unknown permission pickles; valid: imports, run-dir, resume"
    )


def test_run_refuses_variants_and_impossible_min_nodes(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    path = write_yaml(tmp_path / "s.yaml", {**tiny, "seeds": [0, 1]})
    result = _invoke("run", str(path), "--superlink", "127.0.0.1:1", "--insecure")
    assert result.exit_code == 2 and "one concrete run" in result.output
    path = write_yaml(tmp_path / "t.yaml", tiny)
    result = _invoke("run", str(path), "--superlink", "h:1", "--insecure", "--min-nodes", "5")
    assert result.exit_code == 2 and "--min-nodes must lie in 1..4" in result.output


def test_split_writes_one_file_per_node(tiny: dict[str, Any], tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "s.yaml", tiny)
    result = _invoke("split", str(path), "--out", str(tmp_path / "parts"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == [
        f"partition-{k}.npz" for k in range(4)
    ]
