"""Typed errors raised by library code; only :mod:`fedsim.cli` turns them into exits."""

from __future__ import annotations

import warnings
from dataclasses import dataclass


class FedsimError(Exception):
    """Base class of every error fedsim raises on purpose."""


class FedsimWarning(UserWarning):
    """Something a run can go on with but its author should know (the CLI prints one line).

    Shown every time it is raised (not once per location): each run says it again.
    """


warnings.simplefilter("always", FedsimWarning)


@dataclass(frozen=True)
class Problem:
    """One user mistake, located by the dotted scenario key it concerns.

    Parameters
    ----------
    key : str
        Dotted path into the scenario (``strategy.params.proximal_mu``); empty for the
        file as a whole.
    message : str
        What is wrong, including the valid choices where there is a closed set.
    """

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


MAX_LINES = 20  # problems printed for one scenario, the rest counted


class ScenarioError(FedsimError):
    """A scenario cannot be used as written; holds every problem found.

    Parameters
    ----------
    problems : list of Problem
        All problems found (validation reports them together, not one at a time).
    source : str, optional
        File the scenario came from, prefixed to every line of the message.
    """

    def __init__(self, problems: list[Problem], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """Return one line per problem, ``FILE: key: message`` (at most :data:`MAX_LINES`).

        A file that merges one mapping into the next two hundred times has two hundred
        unknown keys; the first lines say what is wrong, the rest is a count.
        """
        prefix = f"{self.source}: " if self.source else ""
        shown = [f"{prefix}{p}" for p in self.problems[:MAX_LINES]]
        if len(self.problems) > MAX_LINES:
            shown.append(f"{prefix}... and {len(self.problems) - MAX_LINES} more problems")
        return shown

    def with_source(self, source: str) -> ScenarioError:
        """Return the same problems attributed to ``source``."""
        return ScenarioError(self.problems, source)

    def with_prefix(self, prefix: str) -> ScenarioError:
        """Return the same problems with ``prefix`` put before every key."""
        return ScenarioError(
            [Problem(f"{prefix}.{p.key}" if p.key else prefix, p.message) for p in self.problems],
            self.source,
        )


class UnknownNameError(FedsimError):
    """A registry lookup failed; the message lists the valid names."""

    def problem(self, key: str, what: str) -> Problem:
        """The scenario problem this failure makes at ``key`` (``unknown model: ...``)."""
        return Problem(key, f"unknown {what}: {self}")


class ImportKindError(UnknownNameError):
    """A ``pkg.module:attr`` name imported something of the wrong kind (not called)."""

    def problem(self, key: str, what: str) -> Problem:
        """The problem at ``key``; the message already says what the name is instead."""
        return Problem(key, str(self))


class DataUnavailableError(FedsimError):
    """A dataset cannot be obtained (offline, missing file, bad contents)."""


class RunDirectoryError(FedsimError):
    """A run directory is missing, unreadable or would be overwritten."""


class DeploymentError(FedsimError):
    """A Flower deployment cannot be started, reached, or finished its run badly."""


class DivergedError(FedsimError):
    """A run's global model became non-finite (NaN or Inf); the message names the round."""
