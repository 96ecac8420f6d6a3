"""A fedsim SuperLink runs only fedsim's own app unless its operator trusts another,
and bounds every request body before Flower reads it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from fedsim.apps import APP_DIR
from fedsim.deploy.flwr_cli import CONNECTION, SuperLinkConnection, flwr_home, flwr_json
from fedsim.deploy.request_guard import START_RUN, RequestGuard, fab_hash
from fedsim.deploy.trusted_apps import app_folder_hash, trusted_hashes
from fedsim.errors import DeploymentError
from tests.deploy.loopback import cluster, free_port, wait_for_port
from tests.deploy.test_loopback import FEDSIM


def _other_app(tmp_path: Path) -> Path:
    """A Flower app that is not fedsim's (same components, another name: another FAB)."""
    other = tmp_path / "other-app"
    other.mkdir()
    text = (APP_DIR / "pyproject.toml").read_text().replace('"fedsim-app"', '"not-fedsim"')
    (other / "pyproject.toml").write_text(text)
    return other


def _runs(operator: SuperLinkConnection) -> list[dict[str, Any]]:
    with flwr_home(operator) as (_, env):
        return list(flwr_json(["ls", CONNECTION], env).get("runs") or [])


@pytest.mark.slow  # a SuperLink process and two `flwr run`s
def test_a_fab_that_is_not_fedsims_is_refused_by_a_default_superlink(tmp_path: Path) -> None:
    """Default ``fedsim deploy superlink`` on loopback: the other app is refused before
    any run exists; fedsim's own app is accepted (the control, so the refusal is not
    just a broken SuperLink)."""
    fleet, control = free_port(), free_port()
    operator = SuperLinkConnection(f"127.0.0.1:{control}")
    with cluster(tmp_path) as c:
        cmd = [FEDSIM, "deploy", "superlink", "--insecure"]
        c.start("superlink", [*cmd, "--port", str(fleet), "--control-port", str(control)])
        wait_for_port(control, timeout_s=60)
        with flwr_home(operator) as (_, env), pytest.raises(DeploymentError) as refused:
            flwr_json(["run", str(_other_app(tmp_path)), CONNECTION], env)
        assert _runs(operator) == [], c.log("superlink")[-2000:]
        with flwr_home(operator) as (_, env):
            started = flwr_json(["run", str(APP_DIR), CONNECTION], env)
        assert started.get("run-id") is not None
        assert len(_runs(operator)) == 1
    assert "403" in str(refused.value) or "trusted" in str(refused.value), refused.value


def test_trusted_hashes_take_a_hash_a_fab_file_or_a_folder(tmp_path: Path) -> None:
    other = _other_app(tmp_path)
    fab = tmp_path / "x.fab"
    fab.write_bytes(b"not a zip, just bytes")
    digest = "ab" * 32
    hashes = trusted_hashes([digest.upper(), str(fab), str(other)])
    assert hashes == {app_folder_hash(), digest, fab_hash(fab.read_bytes()), app_folder_hash(other)}
    assert app_folder_hash() != app_folder_hash(other)
    with pytest.raises(DeploymentError, match="64 hex digits"):
        trusted_hashes(["nothing-here"])


def _call(
    guard: RequestGuard, path: str, chunks: list[bytes], length: int | None
) -> tuple[int, bytes]:
    """Send one request through ``guard``; return the status and the body Flower got."""
    sent: list[dict[str, Any]] = []
    pending = [
        {"type": "http.request", "body": b, "more_body": i < len(chunks) - 1}
        for i, b in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [] if length is None else [(b"content-length", str(length).encode())]
    scope = {"type": "http", "path": path, "headers": headers}
    asyncio.run(guard(scope, receive, send))
    return int(sent[0]["status"]), (sent[1]["body"] if sent[0]["status"] == 200 else b"")


def test_bodies_over_the_bound_never_reach_flower_whatever_they_declare() -> None:
    guard = RequestGuard(_never_called, trusted=None, max_body=100)
    assert _call(guard, "/v1/fleet/push-object", [b"x" * 101], 101)[0] == 413
    assert _call(guard, "/v1/fleet/push-object", [b"x" * 60] * 2, 50)[0] == 413  # lied
    assert _call(guard, "/v1/fleet/push-object", [b"x" * 60] * 2, None)[0] == 413  # chunked
    ok = RequestGuard(_echo_app, trusted=None, max_body=100)
    assert _call(ok, "/v1/fleet/push-object", [b"ab", b"cd"], 4) == (200, b"abcd")


def test_start_run_is_checked_against_the_trusted_hashes() -> None:
    from flwr.proto.control_pb2 import StartRunRequest
    from flwr.proto.fab_pb2 import Fab

    mine, theirs = b"fedsim fab", b"other fab"
    guard = RequestGuard(_echo_app, trusted={fab_hash(mine)})
    for content, status in ((mine, 200), (theirs, 403)):
        body = StartRunRequest(fab=Fab(content=content)).SerializeToString()
        assert _call(guard, START_RUN, [body], len(body))[0] == status
    hub = StartRunRequest(app_spec="@someone/app==1.0").SerializeToString()
    assert _call(guard, START_RUN, [hub], len(hub))[0] == 403
    assert _call(guard, START_RUN, [b"\xff\xff"], 2)[0] == 403  # not a request at all
    anything = RequestGuard(_echo_app, trusted=None)
    body = StartRunRequest(fab=Fab(content=theirs)).SerializeToString()
    assert _call(anything, START_RUN, [body], len(body))[0] == 200


def test_a_node_signature_is_accepted_once() -> None:
    guard = RequestGuard(_echo_app, trusted=None)

    def signed(signature: bytes) -> int:
        scope_headers = [(b"content-length", b"0"), (b"flwr-signature", signature)]
        return _signed_call(guard, scope_headers)

    assert signed(b"sig-1") == 200
    assert signed(b"sig-2") == 200
    assert signed(b"sig-1") == 401


def _signed_call(guard: RequestGuard, headers: list[tuple[bytes, bytes]]) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "path": "/v1/fleet/pull-messages", "headers": headers}
    asyncio.run(guard(scope, receive, send))
    return int(sent[0]["status"])


async def _echo_app(scope: Any, receive: Any, send: Any) -> None:
    """Flower's stand-in: answers 200 with the body it read."""
    body = (await receive())["body"]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def _never_called(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the body reached Flower")
