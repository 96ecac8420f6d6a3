"""The base of every scenario section, and shorthands several sections accept."""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

# Plausible maxima of sizes a user writes (docs/scenarios.md, "Top level"): past them a
# run would exhaust memory or time long before it said anything useful.
MAX_RUNS = 10_000  # variants x sweep points x seeds of one scenario
MAX_WORKERS = 256  # engine.workers, engine.threads_per_worker
MAX_DISTRIBUTION_VALUE = 1e12  # any value a device distribution draws or is given
MAX_LOGNORMAL_SIGMA = 10.0  # exp(10 z): spreads of 10^4 per standard deviation
BOOL_NUMBER = "bool_number"  # the error type of true/false given for a number
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]  # numpy's and torch's seeds are unsigned


class Section(BaseModel):
    """Base of every scenario section: immutable, unknown keys rejected.

    Numbers are plain: no NaN or infinity anywhere (``lr: .inf``), and ``true``/``false``
    is no count (``rounds: true`` would be 1 round to pydantic).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key) if isinstance(key, str) else None
                if isinstance(value, bool) and field and not _takes_bool(field.annotation):
                    # The loader puts `key` on the error's path (a model validator has none).
                    raise PydanticCustomError(
                        BOOL_NUMBER,
                        "expects a number, not {value}",
                        {"key": key, "value": str(value).lower()},
                    )
        return data


def _takes_bool(annotation: Any) -> bool:
    """Whether a field typed ``annotation`` may hold a bool (only number fields may not)."""
    if annotation in (int, float):
        return False
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        return _takes_bool(args[0])
    if get_origin(annotation) in (Union, UnionType):
        return any(_takes_bool(a) for a in args if a is not type(None))
    return True


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
