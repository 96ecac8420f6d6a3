"""An ``.npz`` archive's declared array sizes, checked before numpy allocates them.

A ``.npy`` header states its array's shape and dtype, and ``np.load`` allocates that
much before reading a byte of data: a 200-byte member declaring 10¹⁰ float64 values is
an 80 GB ``MemoryError`` (or the OOM killer). :func:`check_npz_sizes` reads only the
headers and refuses an archive whose arrays claim more bytes than their members hold
(uncompressed) or than this machine has free.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np


def available_memory() -> int:
    """Bytes of memory free now (physical pages available; 2**63 where unknown)."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**63


def check_npz_sizes(path: Path) -> None:
    """Raise ``ValueError`` if a member of the archive ``path`` declares more than it holds.

    Raises
    ------
    ValueError
        If a ``.npy`` member's header cannot be read, declares more bytes than the
        member's uncompressed size, or all members together declare more than the
        free memory.
    """
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                if member.read(6) != b"\x93NUMPY":
                    continue  # numpy returns such a member as bytes: nothing to allocate
                member.seek(0)
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                header = member.tell()
            declared = math.prod(shape) * dtype.itemsize
            if dtype.hasobject:
                raise ValueError(f"{info.filename} holds Python objects")
            if declared > info.file_size - header:
                raise ValueError(
                    f"{info.filename} declares {declared:,} bytes of {dtype} {shape} but "
                    f"holds {max(info.file_size - header, 0):,}"
                )
            total += declared
    free = available_memory()
    if total > free:
        raise ValueError(f"its arrays need {total:,} bytes, more than the {free:,} free")
