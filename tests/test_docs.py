"""Docs stay true to the code: every scenario key is documented, commands exist."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from fedsim.config.schema import Scenario

ROOT = Path(__file__).parents[1]


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    if model in seen:
        return
    seen.add(model)
    for field in model.model_fields.values():
        stack = [field.annotation]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                _models(t, seen)
            stack.extend(typing.get_args(t))


def test_every_scenario_key_is_in_the_reference() -> None:
    text = (ROOT / "docs" / "scenarios.md").read_text()
    models: set[type[BaseModel]] = set()
    _models(Scenario, models)
    missing = sorted(
        f"{m.__name__}.{name}"
        for m in models
        for name in m.model_fields
        if name != "variant"
        and f"`{name}`" not in text
        and f".{name}`" not in text
        and f"{name}` (" not in text
    )
    assert missing == []


def test_readme_commands_are_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in readme and "make run" in readme


def test_docs_link_targets_exist() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+\.md)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
