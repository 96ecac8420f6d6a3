"""Every input issue #33 lists is refused by ``fedsim validate`` in one line, or runs.

Items 7, 8 and 10: bounds on every size a user writes, plain values where they belong,
and a run killed in its first checkpoint. (Duplicate YAML keys belong to the deployment
and run-policy half of the issue and are tested with it; the HF label of 10^6 is in
``tests/data/test_loaded_checks.py``.)
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import fedsim
from fedsim.cli.main import app
from fedsim.errors import FedsimWarning
from tests.conftest import strip_wall_clock, write_yaml

# (case, --set overrides, the key the one error line must name)
REFUSED: list[tuple[str, list[str], str]] = [
    ("lr-inf", ["client.optimizer.lr=.inf"], "client.optimizer.lr: Input should be a finite"),
    ("rounds-true", ["rounds=true"], "rounds: expects a number, not true"),
    ("epochs-true", ["client.local_epochs=true"], "client.local_epochs: expects a number"),
    (
        "krum-100-of-4",
        ["strategy={name: krum, params: {num_malicious_nodes: 100}}"],
        "strategy.params.num_malicious_nodes: 100 malicious nodes assumed among 4 clients",
    ),
    ("seeds-repeated", ["seeds=[1, 1]"], "seeds: Value error, seed 1 is listed twice"),
    ("seed-negative", ["seed=-1"], "seed: Input should be greater than or equal to 0"),
    ("hidden-1e9", ["model.params.hidden=[1000000000]"], "model.params: the model would have"),
    (
        "sigma-1e308",
        ["system.speed={distribution: lognormal, sigma: 1.0e+308}"],
        "system.speed.sigma: Input should be less than or equal to 10",
    ),
    ("threads-1e6", ["engine.threads_per_worker=1000000"], "engine.threads_per_worker: "),
    ("workers-1000", ["engine.workers=1000"], "engine.workers: Value error, must be a whole"),
    (
        "mnist1d-1e9",
        ["data.dataset={name: mnist1d, num_samples: 1000000000}"],
        "data.dataset.num_samples: Input should be less than or equal to 2000000",
    ),
    ("markup-value", ["strategy.name='[/]'"], "strategy.name: unknown strategy: '[/]'"),
    (
        "sweep-1000x1000",
        [
            "sweep={'client.optimizer.lr': " + str([i / 1000 for i in range(1, 1001)]) + ", "
            "'client.batch_size': " + str(list(range(1, 1001))) + "}"
        ],
        "sweep: Value error, variants x sweep points x seeds make 1,000,000 runs",
    ),
]


def _validate(path: Path, overrides: list[str]) -> tuple[int, list[str]]:
    args = ["validate", str(path)]
    for item in overrides:
        args += ["--set", item]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), repr(result.exception)
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("overrides", "expected"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_validate_refuses_in_one_line(
    tiny: dict[str, Any], tmp_path: Path, overrides: list[str], expected: str
) -> None:
    path = write_yaml(tmp_path / "s.yaml", tiny)
    code, lines = _validate(path, overrides)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}: {expected}"), lines[0]


def test_markup_in_a_path_is_printed_as_text(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["data"]["num_clients"] = 0  # any error: its line starts with the path
    (tmp_path / "[bold]x[").mkdir()
    path = write_yaml(tmp_path / "[bold]x[" / "].yaml", tiny)  # .../[bold]x[/].yaml
    code, lines = _validate(path, [])
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {path}: "), lines


def _deflated_zeros(path: Path, nbytes: int) -> Path:
    """An .npz whose x.npy is ``nbytes`` of zeros, deflated (a few KB per 10 MB)."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros(0, np.float32))
    header["shape"] = (nbytes // 4 // 8, 8)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            chunk = bytes(2**20)
            for _ in range(nbytes // len(chunk)):
                f.write(chunk)
        with z.open("y.npy", "w") as f:
            np.lib.format.write_array(f, np.zeros(nbytes // 4 // 8, np.int64))
    return path


def test_an_npz_that_decompresses_like_a_bomb_is_refused_before_loading(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedsim.data.npz_file as npz_file

    monkeypatch.setattr(npz_file, "BOMB_FLOOR_BYTES", 2**20)  # a 32 MB bomb stands for 4.9 GB
    bomb = _deflated_zeros(tmp_path / "zeros.npz", 32 * 2**20)
    assert bomb.stat().st_size < 32 * 2**20 / 200
    tiny["data"]["dataset"] = {"name": "npz", "path": str(bomb)}
    code, lines = _validate(write_yaml(tmp_path / "s.yaml", tiny), [])
    assert code == 2 and len(lines) == 1 and "(over 200x: not data)" in lines[0], lines
    monkeypatch.setattr(npz_file, "_available_memory", lambda: 16 * 2**20)  # 16 MB free
    monkeypatch.setattr(npz_file, "BOMB_FLOOR_BYTES", 2**40)
    code, lines = _validate(write_yaml(tmp_path / "s.yaml", tiny), [])
    assert code == 2 and "this host has 0.0156 GiB free" in lines[0], lines


def test_a_one_example_test_set_runs_with_a_warning(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default run directory, runs/<name>-<time>, goes here
    tiny.update(rounds=1, name="n" * 100_000)  # and a name too long for a file name
    tiny["data"]["test_fraction"] = 1e-300
    tiny["output"]["dir"] = None
    result = CliRunner().invoke(
        app,
        ["run", str(write_yaml(tmp_path / "s.yaml", tiny)), "-q"],
        env={"COLUMNS": "400"},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output[-500:]
    assert "data.test_fraction: 1e-300 of 1797 examples is a test set of 1" in result.output
    run_dir = tmp_path / Path(result.output.split("run directory: ")[1].split()[0])
    assert len(run_dir.name) < 120 and json.loads((run_dir / "summary.json").read_text())


# ------------------------------------------------- a run killed in its first checkpoint


def _killed_in_first_checkpoint(
    tiny: dict[str, Any], run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    import fedsim.server.checkpoint as checkpoint

    def killed(directory: Path, checkpoint: Any) -> None:
        part = directory / "checkpoints" / "state.npz.123.tmp"
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process dies here

    tiny["output"]["checkpoint_every"] = 1
    scenario = fedsim.load_scenario(tiny)
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "save_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            fedsim.run(scenario, run_dir)
    assert not (run_dir / "summary.json").exists()
    return scenario


def test_a_run_killed_in_its_first_checkpoint_can_be_rerun(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = _killed_in_first_checkpoint(tiny, tmp_path / "run", monkeypatch)
    with pytest.warns(FedsimWarning, match="replaced the crashed run"):
        rerun = fedsim.run(scenario, tmp_path / "run")
    fresh = fedsim.run(scenario, tmp_path / "fresh")
    assert strip_wall_clock(rerun.metrics) == strip_wall_clock(fresh.metrics)


def test_a_run_killed_in_its_first_checkpoint_can_be_resumed(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedsim.runner import resume

    _killed_in_first_checkpoint(tiny, tmp_path / "run", monkeypatch)
    with pytest.warns(FedsimWarning, match="starts again from round 0"):
        resumed = resume(tmp_path / "run")
    assert [r["round"] for r in resumed.metrics] == [0, 1, 2]
    assert (tmp_path / "run" / "summary.json").exists()
