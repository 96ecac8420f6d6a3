"""Hostile or broken input files: alias bombs, bad .npz data, impossible populations.

Each is refused with one short line naming the key (exit 2), found by ``fedsim
validate`` too, and in well under the time the input would otherwise take.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fedsim.cli.main import app
from fedsim.compose import load_scenario
from fedsim.config.bounded_yaml import YamlBombError, expanded_size, safe_load
from fedsim.errors import DataUnavailableError, ScenarioError
from tests.conftest import TINY, write_yaml

# ------------------------------------------------------------------ alias bombs


def _bomb(under: str, depth: int = 8) -> str:
    """Nine anchors of nine aliases each: 9^9 ≈ 387 million values in ~400 bytes."""
    lines = ["name: bomb", "a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, depth + 1)]
    if under == "seeds":
        lines.append(f"seeds: *a{depth}")
    else:
        lines.append("data: {dataset: {name: *a8}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("under", ["seeds", "dataset.name"])
def test_an_alias_bomb_is_refused_with_a_short_line(under: str, tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb(under))
    assert path.stat().st_size < 1024
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    (line,) = info.value.lines()
    assert "aliases expand to more than" in line and len(line) < 200
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "aliases expand" in result.output


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(YamlBombError, match="recursive"):
        safe_load("seeds: &a [1, *a]\n")


def test_ordinary_aliases_still_work() -> None:
    text = "base: &b {lr: 0.1, momentum: 0.9}\nx: *b\ny: [*b, *b]\n"
    assert safe_load(text) == yaml.safe_load(text)


def test_the_expansion_is_counted_not_built() -> None:
    """Sizes are memoised per node, so a 9^k expansion is counted from ~10k nodes."""
    small = yaml.compose(_bomb("seeds", depth=3))
    assert small is not None
    # a_k expands to s_k = 1 + 9 s_{k-1}, s_0 = 10 (the list and its nine 1s): s_3 = 8200.
    # The document: its mapping, 6 keys and the name's value (7 scalars), a0..a3, and
    # seeds counted again as a3's expansion.
    s = [10]
    for _ in range(3):
        s.append(1 + 9 * s[-1])
    assert expanded_size(small) == 1 + 7 + sum(s) + s[3]
    big = yaml.compose(_bomb("seeds"))
    assert big is not None
    with pytest.raises(YamlBombError):
        expanded_size(big)


def test_a_huge_value_is_cut_in_the_error_line() -> None:
    data = copy.deepcopy(TINY)
    data["rounds"] = "x" * 10_000
    with pytest.raises(ScenarioError) as info:
        load_scenario(data)
    assert all(len(line) < 300 for line in info.value.lines())


# ------------------------------------------------------------------- npz files


def _npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def _good() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.random((40, 4), dtype=np.float32),
        "y": np.arange(40) % 3,
        "x_test": rng.random((10, 4), dtype=np.float32),
        "y_test": np.arange(10) % 3,
    }


def _bad(**changes: Any) -> dict[str, Any]:
    arrays = _good()
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


NPZ_CASES: list[tuple[str, dict[str, Any] | bytes, str]] = [
    ("lengths", _bad(y=np.arange(30) % 3), "'x' has 40 rows but 'y' has 30"),
    ("nan-features", _bad(x=np.full((40, 4), np.nan, np.float32)), "160 non-finite values"),
    ("inf-test", _bad(x_test=np.full((10, 4), np.inf, np.float32)), "'x_test' has 40"),
    ("negative-label", _bad(y=np.arange(40) % 3 - 1), "labels must be 0..C-1; found -1"),
    ("huge-label", _bad(y=np.where(np.arange(40) == 0, 10**6, np.arange(40) % 3)), "1000001-class"),
    ("float-labels", _bad(y=np.linspace(0, 1, 40)), "must hold integer labels"),
    ("string-x", _bad(x=np.array([["a"] * 4] * 40)), "features must be numbers"),
    ("object-x", _bad(x=np.array([[1, "a"]] * 40, dtype=object)), "holds Python objects"),
    ("wide-x-test", _bad(x_test=np.zeros((10, 5), np.float32)), "'x_test' examples have shape [5]"),
    ("test-pair", _bad(y_test=None), "has one of x_test and y_test"),
    ("empty", _bad(x=np.zeros((0, 4), np.float32), y=np.zeros(0, np.int64)), "holds no examples"),
    ("no-y", _bad(y=None), "lacks arrays ['y']"),
    ("empty-file", b"", "not a .npz file"),
    ("not-zip", b"x,y\n1,2\n", "not a .npz file"),
]


def _write_case(tmp_path: Path, content: dict[str, Any] | bytes) -> Path:
    path = tmp_path / "data.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
        return path
    if "x" in content and content["x"].dtype == object:
        # numpy.savez pickles object arrays; the file exists, but fedsim never unpickles.
        np.savez(path, **content)
        return path
    return _npz(path, **content)


@pytest.mark.parametrize(("case", "content", "expected"), NPZ_CASES, ids=[c[0] for c in NPZ_CASES])
def test_every_npz_problem_is_one_line_naming_the_key(
    case: str, content: dict[str, Any] | bytes, expected: str, tmp_path: Path
) -> None:
    from fedsim.config.schema import NpzDataset
    from fedsim.data.datasets import load_npz

    if case == "inf-test":
        expected = "array 'x_test' has 40 non-finite values"
    path = _write_case(tmp_path, content)
    with pytest.raises(DataUnavailableError) as info:
        load_npz(NpzDataset(path=str(path)))
    message = str(info.value)
    assert message.startswith("data.dataset.path: ") and "\n" not in message
    assert expected in message


@pytest.mark.parametrize("case", ["lengths", "huge-label", "object-x", "empty-file"])
def test_validate_and_run_find_npz_problems(case: str, tmp_path: Path) -> None:
    content = next(c for name, c, _ in NPZ_CASES if name == case)
    path = _write_case(tmp_path, content)
    data = copy.deepcopy(TINY)
    data["data"]["dataset"] = {"name": "npz", "path": str(path)}
    scenario = write_yaml(tmp_path / "s.yaml", data)
    for args in (
        ["validate", str(scenario)],
        ["run", str(scenario), "--out", str(tmp_path / "o"), "-q"],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "data.dataset.path" in result.output and "Traceback" not in result.output


def test_a_good_npz_still_loads(tmp_path: Path) -> None:
    from fedsim.config.schema import NpzDataset
    from fedsim.data.datasets import load_npz

    path = _npz(tmp_path / "d.npz", **_good())
    ds = load_npz(NpzDataset(path=str(path)))
    assert ds.num_classes == 3 and ds.x.shape == (40, 4) and ds.x_test is not None


def test_a_node_file_may_hold_few_classes_but_none_beyond_the_dataset(tmp_path: Path) -> None:
    from fedsim.config.schema import DataConfig
    from fedsim.data.node_data import node_data

    cfg = DataConfig.model_validate({"dataset": "digits", "num_clients": 2})
    one_class = _npz(tmp_path / "a.npz", x=np.zeros((5, 64), np.float32), y=np.full(5, 7))
    assert node_data(cfg, 0, 0, str(one_class)).num_classes == 10
    beyond = _npz(tmp_path / "b.npz", x=np.zeros((5, 64), np.float32), y=np.full(5, 12))
    with pytest.raises(DataUnavailableError, match="label 12 is out of range"):
        node_data(cfg, 0, 0, str(beyond))


# ---------------------------------------------------------------- populations


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"data.num_clients": 1}, "data.num_clients: strategy 'fedavg' needs at least 2 nodes"),
        (
            {"strategy.params.min_available_nodes": 5},
            "strategy.params.min_available_nodes: 5 nodes",
        ),
        ({"strategy.params.min_train_nodes": 9}, "strategy.params.min_train_nodes: 9 nodes"),
        (
            {"strategy.params.fraction_evaluate": 0.5, "strategy.params.min_evaluate_nodes": 6},
            "strategy.params.min_evaluate_nodes: 6 nodes",
        ),
    ],
)
def test_a_population_that_can_never_start_a_round_is_refused(
    changes: dict[str, Any], key: str, tmp_path: Path
) -> None:
    overrides = [f"{k}={v}" for k, v in changes.items()]
    with pytest.raises(ScenarioError) as info:
        load_scenario(write_yaml(tmp_path / "s.yaml", TINY), overrides)
    assert any(key in line for line in info.value.lines()), info.value.lines()


def test_populations_that_can_start_pass() -> None:
    data = copy.deepcopy(TINY)
    data["strategy"]["params"] = {"min_available_nodes": 4, "min_evaluate_nodes": 9}
    load_scenario(data)  # no federated evaluation: min_evaluate_nodes never waits
    data["data"]["num_clients"] = 1
    data["strategy"] = {
        "name": "fedavg",
        "params": {"min_train_nodes": 1, "min_available_nodes": 1},
    }
    load_scenario(data)


# ------------------------------------------------------------ waiting on nodes


def test_a_long_wait_on_nodes_says_so(caplog: pytest.LogCaptureFixture) -> None:
    from fedsim.server.app import wait_for_nodes

    class Slow:
        polls = 0

        def get_node_ids(self) -> list[int]:
            self.polls += 1
            return list(range(min(self.polls, 3)))

    with caplog.at_level(logging.WARNING, logger="fedsim.server.app"):
        wait_for_nodes(Slow(), 3, poll_s=0.0, notice_s=0.0)  # type: ignore[arg-type]
    assert "waiting for nodes: 1 of 3 connected" in caplog.text
