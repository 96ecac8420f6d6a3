"""The Typer app end to end (CliRunner): run, list, validate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from fedsim.cli.main import app
from tests.conftest import write_yaml


def test_run_prints_a_summary_and_writes_the_directory(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    path = write_yaml(tmp_path / "s.yaml", tiny)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "final accuracy" in result.output and f"run directory: {out}" in result.output
    assert (out / "summary.json").exists()


def test_run_with_variants_prints_the_table(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["variants"] = {"a": {}, "b": {"client.optimizer.lr": 0.01}}
    path = write_yaml(tmp_path / "s.yaml", tiny)
    result = CliRunner().invoke(
        app, ["run", str(path), "--out", str(tmp_path / "o"), "-q"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    # A rich table, not raw markdown: one line per variant, cells between box rules.
    lines = result.output.splitlines()
    assert any(line.startswith("┃ variant ┃ runs ┃") for line in lines), result.output
    assert any(line.startswith("│ b ") and "│ 1 " in line for line in lines), result.output
    assert "|---|" not in result.output


def test_version_and_markup_safe_help() -> None:
    import fedsim

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"fedsim {fedsim.__version__}"
    listed = CliRunner().invoke(app, ["list", "distributions"], env={"COLUMNS": "200"})
    assert "uniform on [low, high]" in listed.output  # rich would eat "[low, high]"


def test_list_prints_registries() -> None:
    for kind, expected in [
        ("strategies", "fedprox"),
        ("models", "cnn1d"),
        ("datasets", "mnist1d"),
        ("partitioners", "one-class"),
        ("engines", "inprocess"),
        ("steps", "coded-gradient"),
    ]:
        result = CliRunner().invoke(app, ["list", kind])
        assert result.exit_code == 0 and expected in result.output


def test_list_rejects_unknown_kinds() -> None:
    result = CliRunner().invoke(app, ["list", "widgets"])
    assert result.exit_code == 2


def test_validate_ok(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["seeds"] = [1, 2, 3]
    path = write_yaml(tmp_path / "s.yaml", tiny)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0 and "ok (3 runs)" in result.output
