"""``provenance.json``: what produced a run (versions, code, command, host, scenario).

Written when a run starts (a resumed run adds an entry to ``resumes``), so a result
can be traced to the software and the exact scenario that made it, and ``fedsim
report`` can say in what two runs differ.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from fedsim import bounded_reads
from fedsim.run_files import write_text

PROVENANCE_FILE = "provenance.json"
# The packages whose versions decide a run's numbers.
PACKAGES = ("fedsim", "flwr", "torch", "opacus", "numpy")


def _version(package: str) -> str | None:
    if package == "fedsim":  # a checkout on PYTHONPATH may differ from what pip installed
        import fedsim

        return fedsim.__version__
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state(source: Path | None = None) -> dict[str, Any] | None:
    """The commit and dirty flag of the checkout fedsim runs from (None outside one).

    Dirty means tracked files differ from the commit (untracked files do not count).
    """
    if source is None:
        import fedsim

        source = Path(fedsim.__file__).resolve().parent.parent
    commit = _git(["rev-parse", "HEAD"], source)
    if not commit:
        return None
    status = _git(["status", "--porcelain", "--untracked-files=no"], source)
    return {"commit": commit, "dirty": bool(status), "path": str(source)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def host() -> dict[str, Any]:
    """The machine: name, OS, CPU model and count, GPUs."""
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": _gpus(),
    }


def collect(scenario_sha256: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Everything ``provenance.json`` records about a run starting now."""
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {
            "python": platform.python_version(),
            **{p: _version(p) for p in PACKAGES},
        },
        "git": git_state(),
        "command": list(sys.argv if argv is None else argv),
        "cwd": os.getcwd(),
        "host": host(),
        "scenario_sha256": scenario_sha256,
    }


def write_provenance(run_dir: Path, scenario_sha256: str, *, resumed: bool = False) -> Path:
    """Write ``provenance.json`` (or add this start to its ``resumes`` when resuming)."""
    path = run_dir / PROVENANCE_FILE
    entry = collect(scenario_sha256)
    if resumed and path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            data = {}
        data.setdefault("resumes", []).append(entry)
    else:
        data = entry
    write_text(path, json.dumps(data, indent=2) + "\n")  # never through a planted link
    return path


def read_provenance(run_dir: Path) -> dict[str, Any] | None:
    """The run's provenance, or None if it has none (a run from an older fedsim)."""
    path = run_dir / PROVENANCE_FILE
    try:
        data = bounded_reads.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
