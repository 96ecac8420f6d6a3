"""``flower-superlink`` with its Control and Runtime APIs kept off the node network.

Flower 1.41 serves the Fleet API (SuperNodes), the Control API (``flwr run``,
``flwr supernode register``: submitting runs and admitting node keys, with no user
authentication outside Flower's enterprise edition) and the Runtime API (the ServerApp
processes) on one HTTP port. Anyone who can reach that port can therefore submit a run
(a Flower app is code, run on the SuperLink's host) or register their own SuperNode
key. This launcher runs Flower's own ``flower-superlink`` in this process with Flower
told to serve on the *control* address (loopback by default), and opens one more
listener on the *fleet* address that answers only the Fleet API (``/v1/fleet/...``)
and ``/health``; every other path gets 403 there. Both listeners share Flower's app,
state and TLS settings, and both pass :mod:`fedsim.deploy.request_guard` first
(bounded bodies, trusted apps only, no replayed node signature).

    python -m fedsim.deploy.guarded_superlink --fleet HOST:PORT --trusted-app SHA256
        -- FLOWER-SUPERLINK-ARGS

(``fedsim deploy superlink`` builds this command.) The hook is Flower's call of
``uvicorn.run(app=..., host=..., port=..., ...)``; ``tests/deploy`` fails if a Flower
release stops making it.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from importlib.metadata import entry_points
from typing import Any

import uvicorn

from fedsim.deploy.request_guard import DEFAULT_MAX_BODY, RequestGuard

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FLEET_PREFIX = "/v1/fleet/"  # every call a SuperNode makes
HEALTH = "/health"  # for load balancers and probes
REFUSED = b"only the Fleet API is served on this address\n"


def fleet_path(path: str) -> bool:
    """Whether ``path`` belongs to the Fleet API or is the health check."""
    return path == HEALTH or path.startswith(FLEET_PREFIX)


class FleetOnly:
    """ASGI middleware: on ``fleet_port``, refuse every path but the Fleet API's.

    Requests are told apart by the port of the listening socket that accepted them
    (the ASGI ``server`` field), not by the client's address, which a proxy or NAT
    can make look local.
    """

    def __init__(self, app: ASGIApp, fleet_port: int) -> None:
        self.app = app
        self.fleet_port = fleet_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 403 if it reached the fleet port elsewhere."""
        server = scope.get("server") or (None, None)
        on_fleet_port = scope["type"] in ("http", "websocket") and server[1] == self.fleet_port
        if on_fleet_port and not fleet_path(str(scope.get("path", ""))):
            await _forbid(scope, send)
            return
        await self.app(scope, receive, send)


async def _forbid(scope: Scope, send: Send) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(REFUSED)).encode())]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": REFUSED})


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (IPv6 when the host has a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"fedsim: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def two_listener_run(
    fleet_host: str,
    fleet_port: int,
    trusted: frozenset[str] | None = None,
    max_body: int = DEFAULT_MAX_BODY,
) -> Callable[..., None]:
    """A stand-in for ``uvicorn.run`` that also serves ``fleet_host:fleet_port``.

    Every request on either listener passes :class:`RequestGuard` first (``trusted``:
    the FAB hashes that may run, None for any).
    """

    def run(app: ASGIApp, **kwargs: Any) -> None:
        guarded = RequestGuard(app, trusted, max_body)
        config = uvicorn.Config(FleetOnly(guarded, fleet_port), **kwargs)
        control = bind(config.host, config.port)
        fleet = bind(fleet_host, fleet_port)
        uvicorn.Server(config).run(sockets=[control, fleet])

    return run


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` to (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SystemExit(f"fedsim: --fleet must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> None:
    """Run Flower's ``flower-superlink`` entry point with the fleet-only listener added."""
    parser = argparse.ArgumentParser(prog="python -m fedsim.deploy.guarded_superlink")
    parser.add_argument("--fleet", required=True, help="HOST:PORT that serves SuperNodes only")
    parser.add_argument(
        "--trusted-app", action="append", default=[], help="SHA-256 of a FAB that may run"
    )
    parser.add_argument("--any-app", action="store_true", help="run every submitted FAB")
    parser.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY, help="bytes")
    parser.add_argument("flower_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    flower_args = list(args.flower_args)
    if flower_args[:1] == ["--"]:
        flower_args = flower_args[1:]
    fleet_host, fleet_port = split_address(args.fleet)
    (entry,) = entry_points(group="console_scripts", name="flower-superlink")
    # Flower's SuperLink calls `uvicorn.run(app=..., host=..., port=...)` once, in
    # this process: serve the same app on both listeners instead.
    if not args.any_app and not args.trusted_app:
        raise SystemExit("fedsim: name the apps this SuperLink may run (--trusted-app HASH)")
    trusted = None if args.any_app else frozenset(args.trusted_app)
    uvicorn.run = two_listener_run(fleet_host, fleet_port, trusted, args.max_body)
    sys.argv = ["flower-superlink", *flower_args]
    entry.load()()


if __name__ == "__main__":
    main()
