"""`fedsim validate` checks what a run would refuse, before anything runs, in one pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from fedsim.cli.main import app
from tests.conftest import write_yaml


def _validate(path: Path, *args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(app, ["validate", str(path), *args])
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


def test_the_strategy_is_built_so_its_own_checks_run(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["strategy"] = {"name": "fedcurv", "params": {"curv_lambda": 0.5}}
    path = write_yaml(tmp_path / "s.yaml", tiny)
    assert _validate(path)[0] == 0
    code, lines = _validate(path, "--set", "strategy.params.curv_lambda=-1")
    assert code == 2
    assert lines == [f"error: {path}: strategy.params.curv_lambda: must be a number >= 0, got -1"]


def test_parameters_are_checked_against_their_annotations(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    path = write_yaml(tmp_path / "s.yaml", tiny)
    for key in ("strategy.params.fraction_train", "model.params.hidden"):
        code, lines = _validate(path, "--set", f"{key}=not-a-number")
        assert code == 2 and len(lines) == 1 and f"{key}: " in lines[0], lines


def test_schema_and_unknown_name_errors_come_in_one_pass(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    tiny["strategy"]["name"] = "fedavgg"
    tiny["system"]["bogus"] = 1
    code, lines = _validate(write_yaml(tmp_path / "s.yaml", tiny))
    assert code == 2 and len(lines) == 2
    assert "system.bogus: unknown key" in lines[0]
    assert "strategy.name: unknown strategy" in lines[1] and "did you mean 'fedavg'" in lines[1]


def test_a_missing_npz_file_is_an_error(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["data"]["dataset"] = {"name": "npz", "path": str(tmp_path / "missing.npz")}
    code, lines = _validate(write_yaml(tmp_path / "s.yaml", tiny))
    assert code == 2 and "data.dataset.path: file not found" in lines[-1]


def test_a_strategys_check_names_what_it_needs(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["strategy"] = {"name": "fedaws"}  # on the MLP and an IID split
    code, lines = _validate(write_yaml(tmp_path / "s.yaml", tiny))
    assert code == 2
    assert any("model.name: fedaws needs a class-embedding head" in line for line in lines)
    assert any("data.partitioner: fedaws needs one class per client" in line for line in lines)


def test_import_adds_a_plugin_that_registers_names(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["strategy"] = {"name": "server-lr-fedavg", "params": {"eta": 0.5}}
    path = write_yaml(tmp_path / "s.yaml", tiny)
    code, lines = _validate(path, "--import", "fedsim_examples.server_lr_fedavg")
    assert code == 0 and lines[0] == (
        f"{path}: imports: plugins.0=fedsim_examples.server_lr_fedavg"
    ), lines
    code, lines = _validate(path, "--import", "no_such_module_anywhere")
    assert code == 2
    assert any("plugins.0: cannot import module 'no_such_module_anywhere'" in x for x in lines)
