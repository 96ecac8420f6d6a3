"""The base of every scenario section, and shorthands several sections accept."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    """Base of every scenario section: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, le=1)]


def name_shorthand(value: Any) -> Any:
    """Accept ``"digits"`` or ``"npz:PATH"`` where a mapping with ``name`` is expected."""
    if isinstance(value, str):
        prefix, sep, rest = value.partition(":")
        if sep and prefix in ("npz", "hf"):
            return {"name": prefix, "path": rest}
        return {"name": value}
    return value


def number_shorthand(value: Any) -> Any:
    """Accept a bare number where a distribution is expected (a constant)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"distribution": "constant", "value": value}
    return value
