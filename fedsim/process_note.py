"""What the run process is doing, kept where its supervisor can read it after it dies.

``fedsim run`` (the CLI) runs in two processes on Linux: a supervisor the user sees and a
child that does the run (:mod:`fedsim.cli.supervisor`). With ``engine.workers: 1`` the
clients run in that child, so a client that calls ``os._exit`` or dies of SIGSEGV or
SIGKILL takes the whole run process with it, with no chance to say anything. Before each
client call the child notes here which node it is calling, in which round; the
supervisor reads the note when the child ends without finishing its command, names the
node, the round and how the process died, and marks the run directory crashed.

The note is a small anonymous shared memory mapping made before the fork, so writing it
costs one ``struct.pack_into`` per client call (well under a microsecond, no system
call) and nothing reaches the disk. It is written only by the process that holds it:
worker processes (``engine.workers`` above 1) are supervised by their pool instead.
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
from dataclasses import dataclass
from pathlib import Path

# What the process is doing (the note's first byte).
SERVER = 0  # fedsim's own work: loading, aggregating, evaluating, writing
CLIENT = 1  # a client call (node, round and message type noted)
FINISHED = 2  # the command has finished; the process is exiting

# phase, nodes in the call (more than one: trained together), node, round, message type
_CALL = struct.Struct("<BxxxIqq24s")
_DIR_AT = 64  # the run directory: its length, then its bytes
_DIR_LENGTH = struct.Struct("<H")
_SIZE = 8192
_DIR_MAX = _SIZE - _DIR_AT - _DIR_LENGTH.size
NO_ROUND = -1


@dataclass(frozen=True)
class NoteReading:
    """What a :class:`ProcessNote` said when it was read.

    Attributes
    ----------
    phase : int
        :data:`SERVER`, :data:`CLIENT` or :data:`FINISHED`.
    node : int
        The node of the last client call (the first, when several trained together).
    nodes : int
        How many nodes that call trained together (1: one client).
    server_round : int
        The round of the last client call (:data:`NO_ROUND`: its message named none).
    message_type : str
        The last client call's message type (``train``, ``evaluate``, ...).
    run_dir : Path, optional
        The run directory of the run in progress (None between runs).
    """

    phase: int
    node: int
    nodes: int
    server_round: int
    message_type: str
    run_dir: Path | None


class ProcessNote:
    """A fixed-size note in memory that a forked child writes and its parent reads.

    Make it before ``os.fork()``: both processes then share the same pages.
    """

    def __init__(self) -> None:
        # MAP_SHARED without a file: the pages are shared with children forked later.
        self._buffer = mmap.mmap(-1, _SIZE, flags=mmap.MAP_SHARED)

    def client_call(self, node: int, server_round: int, message_type: str, nodes: int = 1) -> None:
        """Note that the process now calls ``node``'s client (the hot path: one pack)."""
        # "24s" cuts a longer type to 24 bytes; the note only has to be recognisable.
        kind = message_type.encode("utf-8", "replace")
        _CALL.pack_into(self._buffer, 0, CLIENT, nodes, node, server_round, kind)

    def server_work(self) -> None:
        """Note that the client call is over: what follows is fedsim's own work."""
        self._buffer[0] = SERVER

    def finished(self) -> None:
        """Note that the command has finished: an end from now on is not mid-run."""
        self._buffer[0] = FINISHED

    def set_run_dir(self, run_dir: Path | None) -> None:
        """Note the run directory of the run starting now (None: the run is over)."""
        raw = b"" if run_dir is None else os.fsencode(run_dir.resolve())
        if len(raw) > _DIR_MAX:  # longer than any path the system takes: name none
            raw = b""
        _DIR_LENGTH.pack_into(self._buffer, _DIR_AT, len(raw))
        self._buffer[_DIR_AT + _DIR_LENGTH.size : _DIR_AT + _DIR_LENGTH.size + len(raw)] = raw

    def read(self) -> NoteReading:
        """What the note says now."""
        phase, nodes, node, server_round, kind = _CALL.unpack_from(self._buffer, 0)
        (length,) = _DIR_LENGTH.unpack_from(self._buffer, _DIR_AT)
        start = _DIR_AT + _DIR_LENGTH.size
        raw = bytes(self._buffer[start : start + length])
        return NoteReading(
            phase,
            node,
            nodes,
            server_round,
            kind.rstrip(b"\0").decode("utf-8", "replace"),
            Path(os.fsdecode(raw)) if raw else None,
        )


def process_ending(code: int | None) -> str:
    """How a process ended, in words: ``was killed by SIGKILL``, ``exited with code 3``.

    ``code`` as multiprocessing and :func:`os.waitstatus_to_exitcode` give it (minus the
    signal's number for a signal); None: it has not ended.
    """
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


_note: ProcessNote | None = None


def install(note: ProcessNote | None) -> None:
    """Make ``note`` this process's note (the supervised child does, right after the fork)."""
    global _note
    _note = note


def current() -> ProcessNote | None:
    """Return this process's note, or None when nothing supervises it (the Python API)."""
    return _note
