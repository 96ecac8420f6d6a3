"""Every DP recurrence route as a test parameter; ``triton`` skips where it cannot run."""

from __future__ import annotations

import importlib.util
import os

import pytest

from fedsim.kernels.recurrence_routes import ROUTES


def _triton_on_cpu() -> bool:
    """Whether the triton route runs on CPU tensors here (installed, interpreter on)."""
    return (
        importlib.util.find_spec("triton") is not None and os.environ.get("TRITON_INTERPRET") == "1"
    )


DP_ROUTE_PARAMS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            name == "triton" and not _triton_on_cpu(),
            reason="triton not installed or TRITON_INTERPRET unset",
        ),
    )
    for name in sorted(ROUTES)
]
