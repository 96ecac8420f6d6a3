"""Pydantic validation errors as :class:`~fedsim.errors.Problem` lines naming the key."""

from __future__ import annotations

import reprlib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from fedsim.config.schema import Scenario
from fedsim.errors import Problem
from fedsim.registry import choices_text, suggest


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, dict[str, type[BaseModel]]]:
    """Return (model, {tag: member}) for a field annotation (plain model or tagged union)."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, {}
    members: dict[str, type[BaseModel]] = {}
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                for fname in ("name", "distribution"):
                    field = arg.model_fields.get(fname)
                    if field is not None and isinstance(field.default, str):
                        members[field.default] = arg
    return None, members


def _walk(loc: tuple[Any, ...]) -> tuple[list[str], type[BaseModel] | None]:
    """Drop discriminator tags from a pydantic location; return the model at its parent."""
    model: type[BaseModel] | None = Scenario
    path: list[str] = []
    i = 0
    parent: type[BaseModel] | None = Scenario
    while i < len(loc):
        part = loc[i]
        path.append(str(part))
        parent = model
        if model is None or str(part) not in model.model_fields:
            model = None
            i += 1
            continue
        nested, tagged = _model_in(model.model_fields[str(part)].annotation)
        if tagged and i + 1 < len(loc) and str(loc[i + 1]) in tagged:
            model = tagged[str(loc[i + 1])]
            i += 2
            continue
        model = nested
        i += 1
    return path, parent


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error line stays one short line."""
    text = reprlib.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def problems_from_validation(exc: ValidationError) -> list[Problem]:
    """Convert pydantic's errors into one :class:`Problem` per mistake."""
    problems: list[Problem] = []
    for err in exc.errors():
        path, parent = _walk(tuple(err["loc"]))
        key = ".".join(path)
        kind = err["type"]
        if kind == "extra_forbidden":
            valid = sorted(parent.model_fields) if parent is not None else []
            valid = [v for v in valid if v != "variant"]
            msg = f"unknown key{suggest(path[-1], valid)}; valid keys: {', '.join(valid)}"
        elif kind == "union_tag_invalid":
            ctx = err.get("ctx", {})
            tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
            discriminator = str(ctx.get("discriminator", "name")).strip("'")
            what = path[-1] if discriminator == "name" else discriminator
            msg = f"unknown {what}: " + choices_text(str(ctx.get("tag")), tags)
        elif kind == "union_tag_not_found":
            msg = f"missing key {err.get('ctx', {}).get('discriminator', 'name')}"
        elif kind == "literal_error":
            msg = f"{err['msg'].lower()}, got {_short(err.get('input'))}"
        else:
            msg = err["msg"]
            if kind not in ("missing",) and "input" in err and not isinstance(err["input"], dict):
                msg += f" (got {_short(err['input'])})"
        problems.append(Problem(key, msg))
    return problems
