"""What fedsim's SuperLink checks before Flower sees a request.

Flower 1.41's SuperLink runs any Flower app (FAB) that reaches its Control API, and an
app is code: its ServerApp runs on the SuperLink's host, its ClientApps on every node.
fedsim's submission policy lives inside fedsim's own ServerApp, so another app never
meets it. :class:`RequestGuard` (an ASGI middleware in front of Flower's whole app, on
both listeners of :mod:`fedsim.deploy.guarded_superlink`) therefore:

- **bounds every request body** (``Content-Length`` and the bytes actually received)
  before Flower reads it, so an unauthenticated 1 GB body costs at most the bound in
  memory and gets 413;
- **starts only trusted apps**: a ``start-run`` (or ``start-automation``) whose FAB's
  SHA-256 is not in the trusted set is refused with 403; so is one naming an app on
  the Flower Hub or stored under an unknown hash, and ``add-app``. fedsim's own app is
  trusted by default; the operator names others (``--trust-app``) or trusts every app
  (``--trust-any-app``);
- **refuses a replayed node signature**: Flower signs only a node's timestamp (not the
  request), and accepts it for 305 s; a signature seen before is refused with 401, so
  headers copied off the wire cannot be sent again (a copy sent *before* the original
  still gets through once: only TLS prevents reading them).

Flower's FAB hash is the SHA-256 of the FAB's bytes (``flwr build`` writes fixed zip
timestamps, so the same app folder always gives the same hash).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Flower caps a FAB at 10 MB and splits arrays into 5 MB chunks (FAB_MAX_SIZE,
# FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE): 32 MiB leaves room for both and their framing.
DEFAULT_MAX_BODY = 32 * 2**20
START_RUN = "/v1/control/start-run"
START_AUTOMATION = "/v1/control/start-automation"
ADD_APP = "/v1/control/add-app"
# Flower 1.41's signed-header window: TIMESTAMP_TOLERANCE + SYSTEM_TIME_TOLERANCE.
REPLAY_WINDOW_S = 305.0
SIGNATURE_HEADER = b"flwr-signature"


def fab_hash(content: bytes) -> str:
    """Flower's hash of a FAB: the SHA-256 of its bytes, in hex."""
    return hashlib.sha256(content).hexdigest()


def untrusted_app(path: str, body: bytes, trusted: Collection[str]) -> str | None:
    """Why the Control API request ``path`` with ``body`` would start an untrusted app.

    None if it starts none (or only trusted ones).
    """
    from flwr.proto.control_pb2 import (  # Flower's wire format, stable across releases
        StartAutomationRequest,
        StartRunRequest,
    )
    from google.protobuf.message import DecodeError

    if path == ADD_APP:
        return "adding apps from the Flower Hub is off (fedsim runs only trusted FABs)"
    try:
        if path == START_AUTOMATION:
            request = StartAutomationRequest.FromString(body).start_run_request
        else:
            request = StartRunRequest.FromString(body)
    except DecodeError:
        return "the request is not a valid StartRunRequest"
    if request.fab.content:
        digest = fab_hash(request.fab.content)
    elif request.fab.hash_str:
        digest = request.fab.hash_str  # a stored app: Flower looks it up by this hash
    else:
        return f"app '{request.app_spec}' would be fetched from the Flower Hub"
    if digest not in trusted:
        return f"the FAB {digest[:12]}... is not a trusted app"
    return None


class RequestGuard:
    """ASGI middleware: bounded bodies, trusted apps only, no replayed node signature.

    Parameters
    ----------
    app : ASGI app
        Flower's SuperLink app.
    trusted : collection of str, optional
        FAB hashes that may run; None trusts every app.
    max_body : int
        Largest request body accepted, in bytes.
    """

    def __init__(
        self, app: ASGIApp, trusted: Collection[str] | None, max_body: int = DEFAULT_MAX_BODY
    ) -> None:
        self.app = app
        self.trusted = None if trusted is None else frozenset(trusted)
        self.max_body = max_body
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # signature -> when seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request; pass it on with its body replayed, or answer the refusal."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_body:
            await _answer(send, 413, f"request body over {self.max_body} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        while True:  # read the whole (bounded) body before Flower does
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:  # a body longer than it declared, or chunked
                await _answer(send, 413, f"request body over {self.max_body} bytes")
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        path = str(scope.get("path", ""))
        if self.trusted is not None and path in (START_RUN, START_AUTOMATION, ADD_APP):
            reason = untrusted_app(path, body, self.trusted)
            if reason is not None:
                await _answer(
                    send,
                    403,
                    f"this SuperLink runs only trusted apps: {reason} (its operator can "
                    "trust it with `fedsim deploy superlink --trust-app`)",
                )
                return
        signature = headers.get(SIGNATURE_HEADER)
        if signature is not None and self._replayed(signature):
            await _answer(send, 401, "this node signature was used before (a replay)")
            return

        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _replayed(self, signature: bytes) -> bool:
        """Whether ``signature`` was seen within the window (and remember it)."""
        now = time.monotonic()
        while self._seen and next(iter(self._seen.values())) < now - REPLAY_WINDOW_S:
            self._seen.popitem(last=False)
        if signature in self._seen:
            return True
        self._seen[signature] = now
        return False


async def _answer(send: Send, status: int, detail: str) -> None:
    """A JSON error as Flower's own (``code``, ``detail``)."""
    body = json.dumps({"code": status, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
