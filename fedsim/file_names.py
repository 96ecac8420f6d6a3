"""Names of files and directories made from user text (a scenario's name, a variant's label).

A file name may hold 255 bytes on most file systems; a 100,000-character ``name`` must
still give a run directory. Long text keeps its start (what a reader recognises) and
ends in a digest of the whole, so two long names that share a start stay apart.
"""

from __future__ import annotations

import hashlib

MAX_NAME_CHARS = 80  # leaves room for a timestamp, a seed and a suffix within 255 bytes


def short_name(text: str, limit: int = MAX_NAME_CHARS) -> str:
    """``text`` if it has at most ``limit`` characters, else its start plus a digest."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    return f"{text[: limit - len(digest) - 1]}-{digest}"
