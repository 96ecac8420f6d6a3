"""Client failures made loud: the first of each kind shown, training that stopped ended.

A client step with a bug fails on every client in every round; counted as "failures 10"
in the last line, it would let a run that never trained exit 0. The server therefore
looks at each round's failed replies (:class:`FailureWatch`, called once per round):

- the first failure of each distinct kind (its exception type and first line, node
  numbers aside) is shown once, as a :class:`ClientFailureWarning` naming the node and
  carrying the client's traceback (:mod:`fedsim.client.failure_mod` sends it);
- a round whose failures reach ``engine.max_failure_fraction`` of its replies (default
  1.0: every reply failed), ``engine.max_failed_rounds`` rounds in a row (default 1),
  stops the run with :class:`TrainingStopped` naming the cause. The CLI exits 1 and the
  run directory is marked ``FAILED``.

Faults injected by ``system.failure_prob`` are the experiment, not a defect: they are
counted as failures in the metrics but neither shown nor held against the run.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable

from fedsim.errors import FedsimWarning
from fedsim.wire import TRACEBACK_MARK

INJECTED = "fault injected by system.failure_prob"


class ClientFailureWarning(FedsimWarning):
    """The first client failure of its kind (the message holds the client's traceback)."""


class TrainingStopped(Exception):  # a run's outcome, not a user mistake
    """Training stopped: (nearly) every client failed for too many rounds.

    Not a :class:`~fedsim.errors.FedsimError`: the scenario may be right and the code
    (a client step, a plugin) wrong, so the CLI exits 1 rather than 2.
    """


def kind_of(reason: str) -> str:
    """A failure's kind: its first line without the node (``node 3: KeyError: 'x'``)."""
    first = reason.split(TRACEBACK_MARK, 1)[0].splitlines()[0] if reason else ""
    return re.sub(r"\bnode \d+\b:?\s*", "", first).strip() or "an error without a reason"


class FailureWatch:
    """Shows each new kind of client failure once and stops a run that no longer trains.

    Parameters
    ----------
    max_fraction : float or None
        Share of a round's replies that may fail before the round counts as failed
        (a round counts when its failures reach it); None never stops the run.
    max_rounds : int
        Failed rounds in a row that stop the run.
    """

    def __init__(self, max_fraction: float | None = 1.0, max_rounds: int = 1) -> None:
        self.max_fraction = max_fraction
        self.max_rounds = max_rounds
        self.seen: set[str] = set()
        self.failed_in_a_row = 0

    def after_round(self, server_round: int, participants: int, reasons: Iterable[str]) -> None:
        """Look at one round's failed replies (their error reasons).

        Raises
        ------
        TrainingStopped
            If this round makes ``max_rounds`` failed rounds in a row.
        """
        real = [r for r in reasons if INJECTED not in r]
        for reason in real:
            kind = kind_of(reason)
            if kind not in self.seen:
                self.seen.add(kind)
                head, _, trace = reason.partition(TRACEBACK_MARK)
                shown = f"round {server_round}: a client failed: {head.splitlines()[0]}"
                shown += " (the first of its kind; others like it are only counted)"
                if trace:
                    shown += "\n" + trace.rstrip()
                warnings.warn(shown, ClientFailureWarning, stacklevel=2)
        replies = participants + len(real)
        failed = (
            self.max_fraction is not None
            and bool(real)
            and len(real) >= self.max_fraction * replies
        )
        self.failed_in_a_row = self.failed_in_a_row + 1 if failed else 0
        if self.failed_in_a_row >= self.max_rounds:
            kinds = sorted({kind_of(r) for r in real})
            rounds = (
                f"round {server_round}"
                if self.max_rounds == 1
                else f"rounds {server_round - self.max_rounds + 1}-{server_round}"
            )
            raise TrainingStopped(
                f"training stopped: in {rounds}, {len(real)} of {replies} client replies "
                f"failed (engine.max_failure_fraction={self.max_fraction}); cause: "
                f"{'; '.join(kinds[:3])}"
            )
