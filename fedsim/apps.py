"""The one Flower app: ``fedsim/deploy/app`` names the ServerApp and ClientApp.

Every engine runs these two: the Ray engine and deployments submit the folder itself
(:func:`fedsim.deploy.flwr_cli.submit_run`), and the in-process engine loads the
components it names, as Flower's own runtimes load ``module:attribute`` specs.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

APP_DIR = Path(__file__).parent / "deploy" / "app"


def components(app_dir: Path = APP_DIR) -> dict[str, str]:
    """``{"serverapp": "module:attr", "clientapp": "module:attr"}`` of the app."""
    text = (app_dir / "pyproject.toml").read_text(encoding="utf-8")
    found: dict[str, str] = tomllib.loads(text)["tool"]["flwr"]["app"]["components"]
    return found


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load_apps(app_dir: Path = APP_DIR) -> tuple[ServerApp, ClientApp]:
    """The app's ServerApp and ClientApp objects (imported by their specs)."""
    named = components(app_dir)
    server, client = _load(named["serverapp"]), _load(named["clientapp"])
    if not isinstance(server, ServerApp) or not isinstance(client, ClientApp):
        raise TypeError(f"{app_dir}: components are not a ServerApp and a ClientApp")
    return server, client
