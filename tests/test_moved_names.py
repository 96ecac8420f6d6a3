"""Old module names still import, as the very module that now holds the code.

Scenarios and resolved YAMLs in run directories written before the move name
``fedsim.clients.app:app``, ``fedsim.strategies.fedcurv:FedCurv`` and the like.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from fedsim.moved import MOVED, new_name
from fedsim.registry import import_object


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_name_is_the_new_module(old: str) -> None:
    module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert module.__spec__ is not None and module.__spec__.name == MOVED[old]


def test_old_submodule_of_a_moved_package() -> None:
    assert new_name("fedsim.clients.dp") == "fedsim.client.dp"
    assert importlib.import_module("fedsim.clients.dp") is importlib.import_module(
        "fedsim.client.dp"
    )
    assert new_name("fedsim.data") is None


def test_old_import_paths_in_scenarios() -> None:
    from fedsim.algorithms.fedcurv.server import FedCurv
    from fedsim.client.app import app

    assert import_object("fedsim.clients.app:app") is app
    assert import_object("fedsim.strategies.fedcurv:FedCurv") is FedCurv


def test_no_top_level_packages_are_installed() -> None:
    code = "import importlib.util as u; print([n for n in ('strategies', 'clients', 'kernels') if u.find_spec(n)])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.stdout.strip() == "[]", out.stderr
