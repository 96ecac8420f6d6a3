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


def test_kernels_is_a_leaf() -> None:
    bad = [
        f"{p.relative_to(ROOT)} imports {n}"
        for p in _files("kernels")
        for n in _imports(p)
        if n.startswith("fedsim") and not n.startswith("fedsim.kernels")
    ]
    assert bad == []


@pytest.mark.parametrize(
    ("folder", "banned"),
    [
        ("strategies", ("fedsim.clients",)),
        ("clients", ("fedsim.strategies", "fedsim.server")),
        ("fedsim/engine", ("fedsim.strategies", "fedsim.clients", "fedsim.server")),
    ],
)
def test_layers(folder: str, banned: tuple[str, ...]) -> None:
    assert _offenders(folder, banned) == []


def test_nothing_imports_the_bare_folder_names() -> None:
    for folder in ("fedsim", "strategies", "clients", "kernels", "tests", "benchmarks"):
        assert _offenders(folder, ("strategies", "clients", "kernels")) == []


def test_only_the_cli_prints_or_exits() -> None:
    bad = []
    for folder in ("fedsim", "strategies", "clients", "kernels"):
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
