"""Which Flower apps a fedsim SuperLink runs: fedsim's own, plus what its operator names.

An app is named by its FAB hash (the SHA-256 of the FAB's bytes, what Flower stores and
nodes fetch by). ``--trust-app`` takes a hash, a ``.fab`` file, or an app folder (built
as ``flwr run FOLDER`` builds it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from fedsim.apps import APP_DIR
from fedsim.deploy.request_guard import fab_hash
from fedsim.errors import DeploymentError

_HASH = re.compile(r"[0-9a-f]{64}")


def app_folder_hash(app_dir: Path = APP_DIR) -> str:
    """The hash of the FAB that ``flwr run app_dir`` submits (Flower's own builder)."""
    from flwr.cli.build import build_fab_from_disk

    try:
        return fab_hash(build_fab_from_disk(app_dir))
    except Exception as exc:  # Flower raises typer.Exit, ValueError, OSError...
        raise DeploymentError(f"--trust-app {app_dir}: not a Flower app folder ({exc})") from None


def trusted_hashes(named: Sequence[str]) -> frozenset[str]:
    """fedsim's own app's hash and those of the apps ``named`` (hash, .fab file or folder).

    Raises
    ------
    DeploymentError
        If a name is neither a SHA-256 in hex, a readable file, nor an app folder.
    """
    hashes = {app_folder_hash()}
    for name in named:
        path = Path(name).expanduser()
        if _HASH.fullmatch(name.lower()):
            hashes.add(name.lower())
        elif path.is_dir():
            hashes.add(app_folder_hash(path))
        elif path.is_file():
            hashes.add(fab_hash(path.read_bytes()))
        else:
            raise DeploymentError(
                f"--trust-app {name!r}: give a FAB's SHA-256 (64 hex digits), a .fab file "
                "or a Flower app folder"
            )
    return frozenset(hashes)
