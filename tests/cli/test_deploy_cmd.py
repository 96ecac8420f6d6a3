"""``fedsim deploy``: command lines, user errors (exit 2, one line), the data split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from fedsim.cli.main import app
from tests.conftest import write_yaml


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["deploy", *args])


def test_node_dry_run_prints_the_supernode_command(tmp_path: Path) -> None:
    result = _invoke(
        "node", "--partition-id", "2", "--num-partitions", "3", "--superlink", "10.0.0.2:9093",
        "--port", "9300", "--insecure", "--data-path", str(tmp_path / "p.npz"), "--dry-run",
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
    assert "guarded_superlink --fleet 127.0.0.1:9555 -- --host 127.0.0.1 --port 9091" in ok.output


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
