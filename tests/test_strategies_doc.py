"""docs/strategies.md's generated tables equal what the committed result files give, and
the comparison scripts' code path runs end to end on a 1-round version."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).parents[1]


def _script(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_generated_block_equals_its_result_file() -> None:
    """The docs' numbers are the committed result files' (no hand-copied figures), and each
    algorithm's params table is its typed params model's."""
    doc = _script("strategies_doc")
    text = (ROOT / "docs" / "strategies.md").read_text(encoding="utf-8")
    blocks = {m.group("name"): m.group("body") for m in doc.BLOCK.finditer(text)}
    params = {f"{doc.PARAMS_PREFIX}{name}" for name in doc.PARAM_SECTIONS}
    assert set(blocks) == set(doc.SECTIONS) | params
    for name, body in blocks.items():
        assert body == doc.render(name), f"docs/strategies.md block {name} is stale"


def test_a_verdict_is_held_only_when_the_interval_is_above_zero() -> None:
    from fedsim.outputs.claims import verdict

    assert verdict([0.1, 0.12, 0.11])[1] is True
    assert verdict([0.1, -0.12, 0.11])[1] is False  # the interval straddles 0
    assert verdict([0.5])[1] is False  # one pair: no interval, no verdict


def test_the_robust_suite_tunes_each_strategy_attack_free(tmp_path: Path) -> None:
    """CI's reduced tuning of the suite: one strategy, one round, two grid points."""
    suite = _script("robust_suite")
    lrs, record = suite.tuned_lrs(["fedavg", "mom"], [100], [0.05, 0.2], tmp_path, 1, rounds=1)
    assert set(lrs) == {"fedavg", "mom"} and set(lrs.values()) <= {0.05, 0.2}
    chosen = {p["variant"]: p["settings"] for p in record["points"] if p["chosen"]}
    assert chosen == {f"{s}-none-0": {"client.optimizer.lr": lr} for s, lr in lrs.items()}
    scenario = suite.suite_scenario(["fedavg", "mom"], ["alie"], [0.2], [0], 1, lrs)
    for name, override in scenario.variants.items():
        assert override["client.optimizer.lr"] == lrs[name.split("-", 1)[0]]


def test_the_scripts_run_a_one_round_comparison(tiny: dict[str, Any], tmp_path: Path) -> None:
    """CI's reduced version: the robust suite (2 strategies x ALIE at 20%, 1 round) and a
    tuned comparison's result file, rendered into tables as the docs' blocks are."""
    suite, runner, doc = (
        _script("robust_suite"),
        _script("run_comparison"),
        _script("strategies_doc"),
    )
    scenario = suite.suite_scenario(["fedavg", "mom"], ["alie"], [0.2], [0, 1], rounds=1)
    rows = suite.results(suite.run_suite(scenario, tmp_path / "suite", 1))
    assert set(rows["variants"]) == {"fedavg-none-0", "fedavg-alie-20", "mom-none-0", "mom-alie-20"}
    rows["rounds"] = 1
    assert re.search(
        r"\| alie, 20% \| [-0-9.]+ ± [0-9.]+ \| [-0-9.]+ ± [0-9.]+ \|",
        doc.SECTIONS["robust_suite"](rows),
    )

    from fedsim.compose import load_scenario
    from fedsim.experiment import run_experiment

    tiny.update(rounds=1, seeds=[5, 6], variants={"a": {}, "b": {"client.optimizer.lr": 0.3}})
    tiny["tuning"] = {"seeds": [1], "variants": {"a": {"client.optimizer.lr": [0.05, 0.2]}}}
    experiment = run_experiment(load_scenario(tiny), tmp_path / "cmp")
    result = runner.result_file(experiment, "tiny")
    assert result["variants"]["a"]["tuned"]["client.optimizer.lr"] in (0.05, 0.2)
    assert result["variants"]["b"]["tuned"] == {}  # nothing to tune: as written
    from fedsim.outputs.claims import claims_table, comparison_table

    table = comparison_table(result) + claims_table(result, [("a beats b", "a", "b")])
    assert "| a | lr " in table and "| b | - |" in table and "| a beats b (a − b) |" in table
    json.dumps(result)  # what the script writes


def test_a_reduced_tuned_ldpc_comparison_renders_its_section(tmp_path: Path) -> None:
    """CI's reduced version of a loss-based tuned comparison: the shipped LDPC scenario at
    2 rounds, 1 tuning seed, 2 grid points, 2 seeds, through the script to its section."""
    runner, doc = _script("run_comparison"), _script("strategies_doc")
    from fedsim.compose import load_scenario
    from fedsim.experiment import run_experiment

    overrides = [
        "rounds=2",
        "seeds=[0, 1]",
        "tuning.seeds=[100]",
        "tuning.grid={strategy.params.lr: [0.5, 1.0]}",
        "output.plots=false",
    ]
    path = "scenarios/ldpc_regression.yaml"
    experiment = run_experiment(load_scenario(ROOT / path, overrides), tmp_path)
    result = runner.result_file(experiment, path)
    assert {v["tuned"]["strategy.params.lr"] for v in result["variants"].values()} <= {0.5, 1.0}
    section = doc.SECTIONS["ldpc_regression"](result)
    assert re.search(r"\| uncoded-rescaled \| lr (0\.5|1\.0) \| [0-9.]+ ± [0-9.]+ \|", section)
    assert section.count("held") == 3  # one verdict per baseline


OWN = ["gen_accuracy_l0", "spec_accuracy_mean", "spec_accuracy_worst", "spec_global_accuracy_mean"]
LR = "client.optimizer.lr"


@pytest.mark.parametrize(
    ("name", "fields", "curves", "tuned"),
    [
        ("agc_digits", [], [], "strategy.params.server_lr"),
        ("rgp_digits", ["epsilon"], [], LR),
        ("demlearn_digits", OWN, [], LR),
        ("lasgd_digits", ["gen_accuracy_l1"], ["eval_accuracy", "gen_accuracy_l1"], LR),
    ],
)
def test_a_reduced_shipped_comparison_renders_its_block(
    name: str, fields: list[str], curves: list[str], tuned: str, tmp_path: Path
) -> None:
    """CI's reduced version of a shipped comparison (1 round, 2 seeds, one tuning run per
    variant): the result file carries the fields the block reads, and every variant and
    claim of the block renders with a verdict."""
    from fedsim.compose import load_scenario
    from fedsim.experiment import run_experiment

    runner, doc = _script("run_comparison"), _script("strategies_doc")
    reduced = ["rounds=1", "seeds=[0, 1]", "tuning.seeds=[100]", f"tuning.grid={{{tuned}: [0.1]}}"]
    scenario = load_scenario(ROOT / "scenarios" / f"{name}.yaml", [*reduced, "output.plots=false"])
    result = runner.result_file(run_experiment(scenario, tmp_path), name, fields, curves)
    non_private = result["variants"].get("non-private")
    for variant in result["variants"].values():
        assert variant["tuned"] == {tuned: 0.1}
        for field in fields:  # only the non-private variant has no epsilon
            assert None not in variant["final"][field].values() or variant is non_private
        for curve in variant.get("curves", {}).values():
            assert curve["round"] == [0, 1] and None not in curve["gen_accuracy_l1"]
    block = doc.SECTIONS[name](result)
    assert "nan" not in block
    verdicts = re.findall(r"\| (held|not held) \|$", block, re.M)
    assert len(verdicts) >= 3


def test_time_to_target_is_the_first_evaluation_at_the_target() -> None:
    doc = _script("strategies_doc").recorded  # its LASGD section's helper
    curve = {"time_s": [0.0, 2.0, 4.0, 6.0], "acc": [0.1, 0.85, 0.95, 0.7]}
    assert doc.time_to_target(curve, "acc", 0.9) == 4.0
    assert doc.time_to_target(curve, "acc", 0.96) is None


@pytest.mark.parametrize(
    "name",
    [
        "scaffold_digits",
        "compressed_digits",
        "robust_suite",
        "fedcurv_digits",
        "fedaws_digits",
        "label_skew_losses",
        "label_noise",
        "ldpc_regression",
        "fednova_digits",
        "agc_digits",
        "rgp_digits",
        "demlearn_digits",
        "demlearn_mnist1d",
        "lasgd_digits",
        "lasgd_digits_skewed",
    ],
)
def test_result_files_are_committed(name: str) -> None:
    assert (ROOT / "benchmarks" / "results" / f"{name}.json").is_file()
