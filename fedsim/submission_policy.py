"""What a run submitted to a SuperLink may ask of the SuperLink's host.

A submitted run's config is written by whoever submits it. On a SuperLink it could
name Python import paths (code the ServerApp imports: :mod:`fedsim.config.import_paths`),
files on the host (``run-dir``, where the ServerApp writes; ``scenario``, a file it
reads) and ``resume`` (a checkpoint it loads). By default the ServerApp refuses all of
them; the SuperLink's **operator** allows them on that host only, through environment
variables of the SuperLink process, which a submitted run cannot set
(``fedsim deploy superlink --allow-submitted ... --runs-root DIR`` sets them):

- ``FEDSIM_SUBMITTED_RUNS_ALLOW``: comma-separated permissions, from ``imports``,
  ``run-dir`` (any path on the host) and ``resume``.
- ``FEDSIM_SUBMITTED_RUNS_ROOT``: a folder; run directories inside it are accepted
  without the ``run-dir`` permission.

Runs of fedsim's own in-process engine are not submitted (the user runs them) and are
not checked; the Ray engine's private SuperLink allows everything (its only user
starts it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim import wire
from fedsim.errors import Problem, ScenarioError

ALLOW_ENV = "FEDSIM_SUBMITTED_RUNS_ALLOW"
RUNS_ROOT_ENV = "FEDSIM_SUBMITTED_RUNS_ROOT"
IMPORTS = "imports"
RUN_DIR = "run-dir"
RESUME = "resume"
PERMISSIONS: dict[str, str] = {
    IMPORTS: "scenarios may name pkg.module:attr strategies and models (code)",
    RUN_DIR: "run directories (and scenario files) anywhere on the SuperLink's host",
    RESUME: "runs may resume from a checkpoint in their run directory",
}


@dataclass(frozen=True)
class SubmissionPolicy:
    """The operator's answer to what submitted runs may do on this host.

    Parameters
    ----------
    allowed : frozenset of str
        Permissions granted (keys of :data:`PERMISSIONS`).
    runs_root : Path, optional
        Run directories inside this folder are accepted without ``run-dir``.
    """

    allowed: frozenset[str] = field(default_factory=frozenset)
    runs_root: Path | None = None

    def __post_init__(self) -> None:
        unknown = sorted(self.allowed - PERMISSIONS.keys())
        if unknown:
            raise ScenarioError(
                [
                    Problem(
                        ALLOW_ENV,
                        f"unknown permission {', '.join(unknown)}; valid: {', '.join(PERMISSIONS)}",
                    )
                ]
            )

    @classmethod
    def everything(cls) -> SubmissionPolicy:
        """Allow all: for a SuperLink whose only user is the one who started it."""
        return cls(frozenset(PERMISSIONS))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SubmissionPolicy:
        """Read the policy from the SuperLink process's environment (default: refuse)."""
        env = os.environ if environ is None else environ
        words = {w.strip() for w in env.get(ALLOW_ENV, "").split(",") if w.strip()}
        root = env.get(RUNS_ROOT_ENV, "").strip()
        return cls(frozenset(words), Path(root) if root else None)

    def environ(self) -> dict[str, str]:
        """The environment variables that carry this policy to a SuperLink's ServerApps.

        Both are always set (empty for none), so values left in the operator's shell
        never widen what the command line says.
        """
        root = "" if self.runs_root is None else str(self.runs_root.expanduser().resolve())
        return {ALLOW_ENV: ",".join(sorted(self.allowed)), RUNS_ROOT_ENV: root}

    def problems(self, run_config: Mapping[str, Any]) -> list[Problem]:
        """Everything ``run_config`` asks for that this policy refuses (imports nothing)."""
        from fedsim.config.import_paths import scenario_imports
        from fedsim.run_config import scenario_from_run_config

        found: list[Problem] = []
        how = "; the SuperLink's operator can allow it (fedsim deploy superlink {flag})"
        if run_config.get(wire.RUN_SCENARIO) and not run_config.get(wire.RUN_SCENARIO_YAML):
            found += self._host_path(wire.RUN_SCENARIO, run_config[wire.RUN_SCENARIO], how)
        found += self._host_path(wire.RUN_DIR, run_config.get(wire.RUN_DIR) or ".", how)
        if bool(run_config.get(wire.RUN_RESUME, False)) and RESUME not in self.allowed:
            msg = "submitted runs may not resume from a checkpoint on this SuperLink"
            found.append(
                Problem(wire.RUN_RESUME, msg + how.format(flag="--allow-submitted resume"))
            )
        if found:  # a refused path may be the scenario itself: do not read it
            return found
        if IMPORTS not in self.allowed:
            scenario = scenario_from_run_config(run_config, imports=False)
            flag = "--allow-submitted imports"
            found += [
                Problem(
                    name.key,
                    f"'{name.spec}' is an import path (code); submitted runs may not name "
                    "import paths on this SuperLink" + how.format(flag=flag),
                )
                for name in scenario_imports(scenario)
            ]
        return found

    def check(self, run_config: Mapping[str, Any]) -> None:
        """Raise :class:`ScenarioError` listing what ``run_config`` may not ask for."""
        found = self.problems(run_config)
        if found:
            raise ScenarioError(found, "submitted run")

    def _host_path(self, key: str, value: object, how: str) -> list[Problem]:
        if RUN_DIR in self.allowed:
            return []
        path = Path(str(value)).expanduser().resolve()
        if self.runs_root is not None and path.is_relative_to(self.runs_root.resolve()):
            return []
        where = f"outside {self.runs_root}" if self.runs_root is not None else "on its host"
        flag = "--runs-root DIR or --allow-submitted run-dir"
        return [
            Problem(
                key, f"{path} is {where}; submitted runs may not name it" + how.format(flag=flag)
            )
        ]
