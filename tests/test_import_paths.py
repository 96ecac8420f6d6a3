"""Import-path names are code: listed, checked for their kind before use, optional.

``strategy.name: os:system`` and ``model.name: builtins:exec`` used to pass ``fedsim
validate`` and run under ``fedsim run``. Each must now be a one-line error naming its
key, found before anything is called; ``--no-imports`` validates a file without
importing any module it names.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fedsim.cli.main import app
from fedsim.compose import load_scenario
from fedsim.config.import_paths import ImportName, scenario_imports
from fedsim.errors import ScenarioError
from fedsim.models import is_model_factory
from tests.conftest import write_yaml

# A module with a side effect on import: the marker file proves whether it was imported.
MARKER_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("imported")

def factory(input_shape, num_classes):
    raise AssertionError("never called")
"""


@pytest.fixture
def marker_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """An importable module ``fedsim_test_marker_<n>`` that writes a marker when imported."""
    name = f"fedsim_test_marker_{abs(hash(tmp_path)) % 10**8}"
    marker = tmp_path / "imported.txt"
    (tmp_path / f"{name}.py").write_text(MARKER_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("section", "spec", "message"),
    [
        ("strategy", "os:system", "'os:system' is a built-in function, not a flwr Strategy"),
        ("strategy", "subprocess:Popen", "'subprocess:Popen' is class Popen, not a flwr Strategy"),
        ("model", "builtins:exec", "'builtins:exec' is a built-in function, not an nn.Module"),
        ("model", "subprocess:run", "'subprocess:run' is function run, not an nn.Module"),
    ],
)
def test_an_import_path_of_the_wrong_kind_is_one_error_naming_its_key(
    tiny: dict[str, Any], section: str, spec: str, message: str
) -> None:
    tiny[section] = {"name": spec}
    with pytest.raises(ScenarioError) as err:
        load_scenario(tiny)
    (problem,) = err.value.problems
    assert str(problem).startswith(f"{section}.name: {message}")


def test_importable_components_of_the_right_kind_still_load(tiny: dict[str, Any]) -> None:
    tiny["strategy"] = {
        "name": "fedsim_examples.server_lr_fedavg:ServerLrFedAvg",
        "params": {"eta": 1},
    }
    tiny["model"] = {"name": "fedsim.models.mlp:mlp", "params": {"hidden": [4]}}
    scenario = load_scenario(tiny)
    assert scenario_imports(scenario) == [
        ImportName("model.name", "fedsim.models.mlp:mlp"),
        ImportName("strategy.name", "fedsim_examples.server_lr_fedavg:ServerLrFedAvg"),
    ]


def test_a_model_factory_is_judged_by_its_class_or_return_annotation() -> None:
    def annotated(input_shape: tuple[int, ...], num_classes: int) -> nn.Linear:
        raise AssertionError("never called")

    def unannotated(input_shape, num_classes):  # type: ignore[no-untyped-def]
        raise AssertionError("never called")

    assert is_model_factory(nn.Linear) and is_model_factory(annotated)
    assert not is_model_factory(unannotated)
    assert not is_model_factory(torch.zeros)  # a built-in
    assert not is_model_factory(torch.Tensor)  # a class, but not a Module


def test_nested_names_and_variants_are_listed(tiny: dict[str, Any]) -> None:
    tiny["model"] = {
        "name": "cosine",
        "params": {"backbone": "pkg.mod:net", "backbone_params": {"note": "a:b c"}},
    }
    tiny["variants"] = {"alt": {"strategy.name": "pkg.strat:Mine"}, "plain": {}}
    scenario = load_scenario(tiny, imports=False)
    assert scenario_imports(scenario) == [
        ImportName("model.params.backbone", "pkg.mod:net"),
        ImportName("variants.alt.strategy.name", "pkg.strat:Mine"),
    ]


def test_validate_lists_imports_and_no_imports_imports_nothing(
    tiny: dict[str, Any], tmp_path: Path, marker_module: tuple[str, Path]
) -> None:
    name, marker = marker_module
    tiny["model"] = {"name": f"{name}:factory"}
    path = write_yaml(tmp_path / "s.yaml", tiny)

    untrusted = CliRunner().invoke(app, ["validate", "--no-imports", str(path)])
    assert untrusted.exit_code == 0, untrusted.output
    assert f"imports (not imported, not checked): model.name={name}:factory" in untrusted.output
    assert "ok without imports (1 run)" in untrusted.output
    assert not marker.exists()

    # Without --no-imports the module is imported (that is what naming it means), but
    # its unannotated factory is refused before it is called.
    trusted = CliRunner().invoke(app, ["validate", str(path)])
    assert trusted.exit_code == 2
    assert f"imports: model.name={name}:factory" in trusted.output
    assert f"model.name: '{name}:factory' is function factory, not an nn.Module" in trusted.output
    assert marker.exists()


def test_fedsim_run_refuses_os_system_before_calling_it(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    tiny["strategy"] = {"name": "os:system", "params": {"command": "touch /nonexistent-x"}}
    path = write_yaml(tmp_path / "s.yaml", tiny)
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "strategy.name: 'os:system' is a built-in function" in result.output
    assert "Traceback" not in result.output
