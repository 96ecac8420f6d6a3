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
    assert ok.exit_code == 0 and "flower-superlink --host 127.0.0.1 --port 9555" in ok.output


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
