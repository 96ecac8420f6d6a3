"""How fedsim starts the processes that run clients or whole runs.

Worker pools (:mod:`fedsim.engine.workers`) and parallel runs (``fedsim run --jobs``)
start their processes through :func:`process_context`, inside
:func:`main_module_hidden`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
from collections.abc import Iterator, Sequence
from typing import Any


def process_context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    """How fedsim starts processes: 'forkserver' where it exists, else 'spawn'.

    Never plain 'fork': torch's thread pools and CUDA do not survive a fork of a process
    that has used them. The forkserver imports ``preload`` once (torch, Flower, fedsim:
    seconds) when the first pool of this process starts it, so each process it forks
    starts in milliseconds; it lives until this process ends.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["fedsim.training_device", *preload])
    return ctx


@contextlib.contextmanager
def main_module_hidden() -> Iterator[None]:
    """Start processes that do not re-import this program's ``__main__``.

    multiprocessing's forkserver and spawn children run the parent's main script again
    (as ``__mp_main__``) so that objects defined there unpickle; a script that calls
    ``fedsim.run`` without an ``if __name__ == "__main__":`` guard would then start a
    run in every child. fedsim's children import what they run by module name, so they
    never need the script: while this block runs, ``__main__`` names no file or module.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved: dict[str, Any] = {
        k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__
    }
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)
