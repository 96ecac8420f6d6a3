"""Flower's own log: silent during fedsim runs unless asked for (``--verbose``).

Flower logs every round at INFO on the ``flwr`` logger, whose level it sets when
``flwr`` is first imported (``flwr.supercore.logger``): a level set before that import
(a notebook's first cell) is overwritten by it. :func:`flower_log` imports Flower
first, then sets the level for the duration of a run and puts the old one back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

# `fedsim --verbose` sets it, so runs in this process and in the engines' workers see it.
VERBOSE_ENV = "FEDSIM_VERBOSE"


def verbose_default() -> bool:
    """Whether Flower's log is wanted when the caller did not say (``FEDSIM_VERBOSE=1``)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextmanager
def flower_log(verbose: bool | None = None) -> Iterator[None]:
    """Show Flower's INFO log in the block only if ``verbose`` (errors always show)."""
    import flwr.common.logger  # noqa: F401  (its import sets the level we then change)

    logger = logging.getLogger("flwr")
    previous = logger.level
    logger.setLevel(
        logging.INFO if (verbose_default() if verbose is None else verbose) else logging.ERROR
    )
    try:
        yield
    finally:
        logger.setLevel(previous)
