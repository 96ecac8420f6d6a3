"""What a run directory may already hold when a new run claims it.

Called with the directory's :class:`~fedsim.run_lock.RunLock` held, so whatever ran
there before has ended. A finished run blocks a new one unless ``output.overwrite``;
a crashed run (``CRASHED`` marker, or a log without a ``summary.json``: a process
killed outright writes no marker) never blocks: the new run replaces it, unless it left
a checkpoint (``fedsim run --resume`` continues it; ``overwrite`` discards it).

Replacing a run removes only fedsim's own files and refuses a directory holding
anything else; no fedsim file may be a symbolic link (:mod:`fedsim.run_files`). A run
killed before its first checkpoint was complete has none: it is rerun, and
``--resume`` starts it again from round 0.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from fedsim.errors import RunDirectoryError
from fedsim.run_files import foreign_entries, refuse_links, remove_run_files, write_text
from fedsim.run_lock import LOCK_FILE
from fedsim.server.checkpoint import checkpoint_path

CRASH_FILE = "CRASHED"
FAILED_FILE = "FAILED"  # training stopped (every client failed): what failed, and when
RESOLVED = "scenario.resolved.yaml"
_RUN_FILES = ("metrics.jsonl", "summary.json")


def is_crashed(run_dir: Path) -> bool:
    """Whether the run directory holds a run that started and never finished."""
    if (run_dir / CRASH_FILE).exists() or (run_dir / FAILED_FILE).exists():
        return True
    return (run_dir / "metrics.jsonl").exists() and not (run_dir / "summary.json").exists()


def mark_crashed(run_dir: Path, exc: BaseException, *, failed: bool = False) -> None:
    """Write the ``CRASHED`` marker (``FAILED`` with ``failed``): what stopped the run, when.

    ``FAILED`` says the run ended as it should not (its training stopped: every client
    failed); either marker lets the next run into the directory replace it.
    """
    info = {
        "error": type(exc).__name__,
        "message": str(exc).splitlines()[0] if str(exc) else "",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # The run's own error matters more than the marker.
    with contextlib.suppress(OSError, RunDirectoryError):
        write_text(run_dir / (FAILED_FILE if failed else CRASH_FILE), json.dumps(info) + "\n")


def claim(run_dir: Path, *, overwrite: bool) -> str | None:
    """Make ``run_dir`` ready for a new run; return a notice when an old run was removed.

    Raises
    ------
    RunDirectoryError
        If it holds a finished run (without ``overwrite``), a crashed run with a
        checkpoint (without ``overwrite``), run files but no resolved scenario (not
        a fedsim run directory), or files fedsim did not write (nothing is removed);
        or if a file fedsim writes is a symbolic link.
    """
    refuse_links(run_dir)
    holds_run = any((run_dir / name).exists() for name in _RUN_FILES)
    if not holds_run and not is_crashed(run_dir):
        return None
    if not (run_dir / RESOLVED).exists():
        raise RunDirectoryError(
            f"{run_dir} holds run files but no {RESOLVED}; choose another --out"
        )
    crashed = is_crashed(run_dir)
    if not overwrite:
        if not crashed:
            raise RunDirectoryError(
                f"{run_dir} already holds a run; choose another --out "
                "(or set output.overwrite: true to replace it)"
            )
        # A completed checkpoint, not the folder: a run killed while writing its first
        # one left only a temporary file there, and is a crashed run like any other.
        if checkpoint_path(run_dir).is_file():
            raise RunDirectoryError(
                f"{run_dir} holds a crashed run with a checkpoint: continue it with "
                f"`fedsim run --resume {run_dir}`, or set output.overwrite: true"
            )
    foreign = foreign_entries(run_dir)
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        shown = ", ".join(foreign[:5]) + more
        raise RunDirectoryError(
            f"{run_dir} holds a previous run and files fedsim did not write ({shown}); "
            "fedsim replaces only its own files: move them, or choose another --out"
        )
    remove_run_files(run_dir, keep=LOCK_FILE)
    what = "crashed run" if crashed else "run"
    return f"replaced the {what} in {run_dir}"
