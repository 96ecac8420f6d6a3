"""The Fleet-only listener: which paths the devices' port answers, and Flower's hook."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from typing import Any

import pytest

from fedsim.deploy.guarded_superlink import FleetOnly, fleet_path, split_address

FLEET_PORT, CONTROL_PORT = 9093, 9091


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"flower"})


def _status(path: str, port: int) -> int:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "path": path, "server": ("192.168.1.10", port)}
    asyncio.run(FleetOnly(_app, FLEET_PORT)(scope, receive, send))
    return int(sent[0]["status"])


@pytest.mark.parametrize(
    ("path", "on_fleet_port"),
    [
        ("/v1/fleet/pull-messages", 200),
        ("/health", 200),
        ("/v1/control/register-node", 403),  # `flwr supernode register`
        ("/v1/control/start-run", 403),  # `flwr run`
        ("/v1/runtime/pull-app-inputs", 403),  # the ServerApp's API
        ("/v1/fleetx", 403),
        ("/docs", 403),
    ],
)
def test_the_devices_port_answers_the_fleet_api_only(path: str, on_fleet_port: int) -> None:
    assert _status(path, FLEET_PORT) == on_fleet_port
    assert _status(path, CONTROL_PORT) == 200  # the loopback listener serves everything


def test_fleet_paths_and_addresses() -> None:
    assert fleet_path("/v1/fleet/get-run") and not fleet_path("/v1/fleet")
    assert split_address("[::]:9093") == ("::", 9093)
    assert split_address("0.0.0.0:1") == ("0.0.0.0", 1)
    with pytest.raises(SystemExit):
        split_address("nohost")


def test_flower_still_serves_through_one_uvicorn_run_call() -> None:
    """The launcher replaces ``uvicorn.run``: a Flower upgrade that stops calling it (or
    splits the APIs itself) must fail here, not open the Control API silently."""
    flower_superlink = importlib.import_module("flwr.superlink.cli.flower_superlink")
    source = inspect.getsource(flower_superlink._run_superlink_http_api)
    assert source.count("uvicorn.run(") == 1
    assert "app=fastapi_app" in source and "port=lifespan_config.port" in source
