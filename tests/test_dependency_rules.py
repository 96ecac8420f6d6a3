"""The layering rules of DESIGN.md, checked on the source tree's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _offenders(folder: str, banned: tuple[str, ...]) -> list[str]:
    return [
        f"{p.relative_to(ROOT)} imports {name}"
        for p in _files(folder)
        for name in sorted(_imports(p))
        if any(name == b or name.startswith(b + ".") for b in banned)
    ]


def _glob(pattern: str) -> list[Path]:
    return sorted(ROOT.glob(pattern))


def _offenders_in(paths: list[Path], banned: tuple[str, ...]) -> list[str]:
    return [
        f"{p.relative_to(ROOT)} imports {name}"
        for p in paths
        for name in sorted(_imports(p))
        if any(name == b or name.startswith(b + ".") for b in banned)
    ]


def test_kernels_is_a_leaf() -> None:
    files = _files("fedsim/kernels")
    assert files, "fedsim/kernels holds no modules"
    bad = [
        f"{p.relative_to(ROOT)} imports {n}"
        for p in files
        for n in _imports(p)
        if n.startswith("fedsim") and not n.startswith("fedsim.kernels")
    ]
    assert bad == []


ALGORITHM_CLIENTS = tuple(
    f"fedsim.algorithms.{p.parent.name}.client" for p in _glob("fedsim/algorithms/*/client.py")
)
ALGORITHM_SERVERS = tuple(
    f"fedsim.algorithms.{p.parent.name}.server" for p in _glob("fedsim/algorithms/*/server.py")
)


@pytest.mark.parametrize(
    ("pattern", "banned"),
    [
        # The server halves (and the strategy registry) never import a client module.
        ("fedsim/algorithms/*/server.py", ("fedsim.client", *ALGORITHM_CLIENTS)),
        ("fedsim/strategies/*.py", ("fedsim.client", *ALGORITHM_CLIENTS)),
        # The client halves never import a server module.
        (
            "fedsim/algorithms/*/client.py",
            ("fedsim.server", "fedsim.strategies", *ALGORITHM_SERVERS),
        ),
        ("fedsim/client/**/*.py", ("fedsim.server", "fedsim.strategies", *ALGORITHM_SERVERS)),
        # Scenarios are data: config knows no client, server, engine or composition
        # (capabilities come from algorithm specs and engine sections).
        (
            "fedsim/config/*.py",
            (
                "fedsim.client",
                "fedsim.server",
                "fedsim.engine",
                "fedsim.compose",
                "fedsim.strategies",
            ),
        ),
        # Outputs read run directories, not scenario sources.
        ("fedsim/outputs/*.py", ("fedsim.config.sources",)),
        # The engines import no algorithm and no client module.
        (
            "fedsim/engine/*.py",
            ("fedsim.strategies", "fedsim.algorithms", "fedsim.client", "fedsim.server"),
        ),
    ],
)
def test_layers(pattern: str, banned: tuple[str, ...]) -> None:
    paths = _glob(pattern)
    assert paths, f"{pattern} matches no module"
    assert _offenders_in(paths, banned) == []


def test_algorithm_halves_are_in_every_package() -> None:
    assert len(ALGORITHM_SERVERS) >= 9
    assert len(ALGORITHM_CLIENTS) >= 6


def test_nothing_imports_the_bare_folder_names() -> None:
    # Other libraries own the top-level names `strategies`, `clients` and `kernels`.
    for folder in ("fedsim", "tests", "benchmarks"):
        assert _offenders(folder, ("strategies", "clients", "kernels")) == []


def test_only_the_cli_prints_or_exits() -> None:
    bad = []
    for folder in ("fedsim",):
        for path in _files(folder):
            if "cli" in path.relative_to(ROOT).parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call):
                    f = node.func
                    name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")
                    if name in {"print", "exit", "_exit"}:
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {name}")
    assert bad == []
