"""``fedsim run`` in two processes: one that runs, one that can say how it died.

With ``engine.workers: 1`` the clients run in fedsim's own process, so a client that
calls ``os._exit(7)``, or dies of SIGSEGV or SIGKILL, ends the run process at once:
nothing in it can report anything. So, on Linux, ``fedsim run`` forks before it parses
its command line: the child does the run and notes each client call
(:mod:`fedsim.process_note`); the parent, the process the user started, waits. When the
child ends without having finished its command, the parent prints one line naming the
node, the round and how the process died, marks the run directory crashed (a rerun or
``--resume`` then works as after any crash) and exits 1.

Otherwise the parent changes nothing a user sees: it exits with the child's exit code,
or dies of the signal that stopped it; the run lock names the parent
(:func:`fedsim.run_lock.name_owner`). Signals: Ctrl-C and a terminal hang-up reach
both processes (the kernel signals the whole foreground process group), so the parent
passes on only the SIGINT, SIGTERM and SIGHUP sent to it alone (``kill PID``); the
child gets ``PR_SET_PDEATHSIG=SIGKILL``, so it never outlives a parent killed
outright. Where ``fork``, ``prctl`` or ``sigwaitinfo`` are missing (macOS, Windows)
the command runs in one process, as the Python API always does: a client that kills
it then ends the run with no word.

The fork comes after the CLI's imports (torch, numpy and Flower load with
:mod:`fedsim.cli.main`) but before any of fedsim's threads or worker processes start;
torch and OpenBLAS re-create their thread pools in a forked child.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from rich.markup import escape

from fedsim import process_note, run_lock
from fedsim.cli.errors import RUN_FAILED, stderr
from fedsim.errors import RunDirectoryError
from fedsim.process_note import (
    CLIENT,
    FINISHED,
    NO_ROUND,
    NoteReading,
    ProcessNote,
    process_ending,
)
from fedsim.run_directory import mark_crashed
from fedsim.server.checkpoint import checkpoint_path

SUPERVISED_COMMANDS = frozenset({"run"})
# Sent to this process alone, these stop the run: passed on to the child. By name:
# Windows has neither SIGHUP nor SIGCHLD, and this module must import there too.
_PASSED_ON = ("SIGINT", "SIGTERM", "SIGHUP")
_SI_KERNEL = 0x80  # si_code of a signal the kernel sent (a terminal's, to its group)
_PR_SET_PDEATHSIG = 1


class RunProcessDied(RuntimeError):
    """The process doing the run ended without finishing (what ``CRASHED`` then says)."""


def wants_supervisor(argv: list[str]) -> bool:
    """Whether ``argv`` (without the program) runs a supervised command on this platform.

    The command is the first word that is not an option (fedsim's own options, such as
    ``-v``, take no value).
    """
    command = next((a for a in argv if not a.startswith("-")), None)
    return command in SUPERVISED_COMMANDS and _can_supervise()


def _can_supervise() -> bool:
    return sys.platform.startswith("linux") and hasattr(signal, "sigwaitinfo")


def _watched() -> set[signal.Signals]:
    """The signals the parent waits for: those it passes on, and its child's end."""
    return {getattr(signal, name) for name in (*_PASSED_ON, "SIGCHLD")}


def run_supervised(command: Callable[[], object]) -> None:
    """Run ``command`` in a forked child; in this process, wait and end as it did.

    Never returns in the parent: it exits with the child's code (1 with a one-line
    message when the child died mid-run) or dies of the signal that stopped the child.
    """
    note = ProcessNote()
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    # An inherited SIG_IGN would reap the child unseen; blocked, the watched signals
    # wait for sigwaitinfo (the child unblocks them at once).
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _watched())
    child = os.fork()
    if child == 0:
        _die_with(parent)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        process_note.install(note)
        run_lock.name_owner(parent)
        try:
            command()
        finally:
            note.finished()
        return
    status, received = _wait(child)
    _end_like(status, received, note.read())


def _die_with(parent: int) -> None:
    """Have the kernel SIGKILL this process when ``parent`` dies (or now, if it has)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request was in place
        os._exit(RUN_FAILED)


def _wait(child: int) -> tuple[int, set[int]]:
    """Wait for ``child`` to end, passing on signals; return its status and what came."""
    received: set[int] = set()
    watched = _watched()
    while True:
        info = signal.sigwaitinfo(watched)
        if info.si_signo == signal.SIGCHLD:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid == child:
                return status, received
            continue
        received.add(info.si_signo)
        if info.si_code != _SI_KERNEL:  # a terminal's signal reached the child too
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, info.si_signo)


def _end_like(status: int, received: set[int], note: NoteReading) -> None:
    """End this process as the child ended, or report how it died mid-run."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0 and note.phase == FINISHED:
        _exit(code)
    if code < 0 and -code in received:  # stopped as asked: end the same way
        signal.signal(-code, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {-code})
        os.kill(os.getpid(), -code)
    message = died_message(code, note)
    if note.run_dir is not None:
        message += _mark(note.run_dir, message)
    if sys.stdout.isatty():  # the child's progress bar: mid-line, the cursor hidden
        sys.stdout.write("\n\x1b[?25h")
        sys.stdout.flush()
    stderr.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    _exit(RUN_FAILED)


def _exit(code: int) -> NoReturn:
    """Exit at once, flushing what this process printed.

    It did no work of its own: tearing down what it imported (torch, Flower) would only
    delay the shell's prompt.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def died_message(code: int, note: NoteReading) -> str:
    """One line: who was running when the run process ended, and how it ended."""
    how = process_ending(code)
    in_round = "" if note.server_round == NO_ROUND else f" in round {note.server_round}"
    if note.phase == FINISHED:
        return f"fedsim's run process {how} after its command had finished"
    if note.phase != CLIENT:
        last = (
            "" if note.server_round == NO_ROUND else f" (the last was in round {note.server_round})"
        )
        return f"fedsim's run process {how} outside any client call{last}"
    who = f"node {note.node}" if note.nodes == 1 else f"{note.nodes} nodes trained together"
    first = "" if note.nodes == 1 else f" (from node {note.node})"
    return (
        f"{who}{first} died{in_round} ({note.message_type}): fedsim's run process {how} "
        "while running its client (engine.workers: 1 runs clients in that process; "
        "with 2 or more such a death is one counted failure)"
    )


def _mark(run_dir: Path, message: str) -> str:
    """Mark ``run_dir`` crashed; return what the line adds about it."""
    try:
        with run_lock.RunLock(run_dir):
            mark_crashed(run_dir, RunProcessDied(message))
    except RunDirectoryError as exc:  # another run took it, or it is gone
        return f"; {run_dir} could not be marked crashed ({exc})"
    resume = f"fedsim run --resume {run_dir}"
    if checkpoint_path(run_dir).is_file():
        return f"; {run_dir} is marked crashed: `{resume}` continues it from its last checkpoint"
    return f"; {run_dir} is marked crashed: `{resume}` runs it again from round 0"
