"""The files a run writes into its run directory, and how it writes them safely.

Two rules protect a user's data:

- **Only fedsim's files are ever removed.** Replacing a run removes the entries named
  in :data:`RUN_ENTRIES` (what fedsim itself writes) and those the previous run listed
  in its manifest (``.fedsim-manifest``: what appeared in the directory while it ran,
  e.g. a user callback's files). A directory that holds anything else is refused and
  nothing in it is touched: ``--out`` pointed at a source tree never deletes it.
- **A planted link is never followed.** Before a run writes anything, every fedsim
  entry that is a symbolic link is refused (a link named ``summary.json`` pointing at
  ``~/.bashrc`` would otherwise be overwritten through), and the run files fedsim opens
  itself (:func:`write_text`, :func:`open_append`, the lock) are opened with
  ``O_NOFOLLOW``, so a link planted while the run goes on is refused too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from fedsim.errors import RunDirectoryError

MANIFEST_FILE = ".fedsim-manifest"

#: Top-level names fedsim writes into a run directory (the engines, the ServerApp, the
#: outputs and trackers). A name added to a writer must be added here, or replacing a
#: crashed run refuses a directory that holds it (tests/test_run_files.py runs every
#: writer and checks this list covers what it wrote).
RUN_ENTRIES = frozenset(
    {
        "run.lock",
        "CRASHED",
        "FAILED",
        MANIFEST_FILE,
        "scenario.resolved.yaml",
        ".scenario.resolved.yaml.tmp",
        "metrics.jsonl",
        "summary.json",
        "provenance.json",
        "sharing.json",
        "label_noise.json",
        "per_client_eval.csv",
        "clock_events.csv",
        "metrics.csv",
        "final_arrays.npz",
        "flower.log",
        "plots",
        "checkpoints",
        "tensorboard",
        "wandb",
        "mlruns",
    }
)

# O_NOFOLLOW is POSIX; where it is missing (Windows) the symlink check of claim() stands.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses a symbolic link at ``path``'s last component.

    Raises
    ------
    RunDirectoryError
        If ``path`` is a symbolic link (or cannot be opened), naming it.
    """
    try:
        return os.open(path, flags | _NOFOLLOW | _CLOEXEC, mode)
    except OSError as exc:
        if path.is_symlink():
            raise RunDirectoryError(
                f"{path} is a symbolic link; fedsim never writes through a link in a "
                "run directory (remove it, or choose another --out)"
            ) from None
        raise RunDirectoryError(f"cannot open {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def open_text(path: Path, mode: str) -> Iterator[IO[str]]:
    """Open a run file for writing (``"w"``) or appending (``"a"``), never through a link."""
    extra = {"w": os.O_TRUNC, "a": os.O_APPEND}[mode]
    fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | extra)
    with os.fdopen(fd, mode, encoding="utf-8", newline="") as f:
        yield f


def write_text(path: Path, text: str) -> None:
    """Write a whole run file, never through a symbolic link."""
    with open_text(path, "w") as f:
        f.write(text)


def linked_entries(run_dir: Path) -> list[str]:
    """fedsim's entries in ``run_dir`` (and in its fedsim folders) that are symbolic links."""
    found = []
    for name in sorted(RUN_ENTRIES):
        path = run_dir / name
        if path.is_symlink():
            found.append(name)
        elif path.is_dir():
            found += [
                f"{name}/{p.relative_to(path)}" for p in sorted(path.rglob("*")) if p.is_symlink()
            ]
    return found


def refuse_links(run_dir: Path) -> None:
    """Raise if any entry fedsim would write in ``run_dir`` is a symbolic link."""
    links = linked_entries(run_dir)
    if links:
        raise RunDirectoryError(
            f"{run_dir} holds a symbolic link where fedsim writes ({', '.join(links[:3])}); "
            "fedsim never writes through links: remove it, or choose another --out"
        )


def _manifest(run_dir: Path) -> set[str]:
    """Names the previous run listed as its own (none if the manifest is unreadable)."""
    path = run_dir / MANIFEST_FILE
    if path.is_symlink() or not path.is_file():
        return set()
    try:
        names = json.loads(path.read_text(encoding="utf-8")[:1_000_000])
    except (OSError, ValueError):
        return set()
    if not isinstance(names, list):
        return set()
    # A name from the file is only a name: never a path that leaves the directory.
    return {n for n in names if isinstance(n, str) and n and "/" not in n and n not in {".", ".."}}


def foreign_entries(run_dir: Path) -> list[str]:
    """Entries of ``run_dir`` that neither fedsim nor the previous run wrote."""
    own = RUN_ENTRIES | _manifest(run_dir)
    return sorted(e.name for e in run_dir.iterdir() if e.name not in own)


def entry_names(run_dir: Path) -> set[str]:
    """The names in ``run_dir`` now (taken when a run starts, for :func:`record_manifest`)."""
    return {e.name for e in run_dir.iterdir()}


def record_manifest(run_dir: Path, before: Iterable[str]) -> None:
    """Add what appeared in ``run_dir`` since ``before`` to its manifest.

    Those are the run's own files; a resumed run keeps the names its earlier part listed.
    """
    names = sorted(entry_names(run_dir) - set(before) | _manifest(run_dir) | {MANIFEST_FILE})
    with contextlib.suppress(RunDirectoryError):  # the run's result matters more
        write_text(run_dir / MANIFEST_FILE, json.dumps(names) + "\n")


def remove_run_files(run_dir: Path, keep: str) -> None:
    """Remove the previous run's entries (never ``keep``: the lock this run holds).

    Call :func:`foreign_entries` first: this removes only fedsim's names and the
    manifest's, and a link is removed as a link (never what it points at).
    """
    own = RUN_ENTRIES | _manifest(run_dir)
    for entry in run_dir.iterdir():
        if entry.name == keep or entry.name not in own:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
