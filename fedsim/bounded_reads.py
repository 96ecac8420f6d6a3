"""Reading a user's text and JSON files with bounds: a file is data, never a crash or a hang.

- :func:`read_text` reads a regular file only (a FIFO, ``/dev/zero`` or a terminal would
  block or never end), at most ``max_bytes`` of it (``/proc`` files claim size 0 and a
  wrong path may name a multi-gigabyte log), as UTF-8 text without NUL bytes (a binary
  file given as a CSV).
- :func:`loads` is ``json.loads`` whose every failure is a
  :class:`json.JSONDecodeError`: nesting deep enough to exhaust Python's recursion
  (``[[[[...]]]]``) and integers past Python's 4,300-digit conversion limit included,
  so the callers' ``except ValueError`` handles them.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

DEFAULT_MAX_BYTES = 256 * 2**20  # far above any trace, LEAF shard or run file fedsim reads


class UnreadableFile(ValueError):
    """A file that is not a readable, bounded UTF-8 text file (the message says why)."""


def read_text(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """The text of the regular file ``path``, refused past ``max_bytes`` or if binary.

    Raises
    ------
    UnreadableFile
        If ``path`` is no regular file, cannot be read, is longer than ``max_bytes``,
        or is not UTF-8 text.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO never blocks
    except OSError as exc:
        raise UnreadableFile(f"{path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnreadableFile(f"{path} is not a regular file")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnreadableFile(f"{path} is larger than {max_bytes:,} bytes")
    if b"\x00" in data:
        raise UnreadableFile(f"{path} is a binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableFile(f"{path} is not UTF-8 text") from None


def loads(text: str | bytes) -> Any:
    """``json.loads`` that fails only with :class:`json.JSONDecodeError`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", _as_str(text), 0) from None
    except ValueError as exc:  # an integer past Python's digit limit
        raise json.JSONDecodeError(str(exc).split(";")[0], _as_str(text), 0) from None


def _as_str(text: str | bytes) -> str:
    return text if isinstance(text, str) else text[:200].decode("utf-8", "replace")
