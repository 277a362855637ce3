"""What every request passes before the app reads a byte of its body (docs/SERVING.md, "The server's edge").

`Edge` is a plain ASGI middleware, outermost in the app. From the request's headers alone it refuses:
  - a `Host` the server does not answer to (on a loopback bind: only localhost, 127.0.0.1 and ::1), so
    a web page cannot reach the local server through DNS rebinding: 400;
  - a missing or wrong `Authorization: Bearer <key>` when the server has a key (the probes /live and
    /health stay open): 401;
  - a POST whose `Content-Type` is not application/json, so a page's "simple" text/plain POST, which
    needs no CORS preflight, never reaches a route: 415;
  - a declared `Content-Length` over the body cap: 413, before the body is read, so an
    `Expect: 100-continue` client never gets `100 Continue` (uvicorn sends it on the first read);
  - a generation request past the server's bound on requests held at once (running and queued): 503
    with `Retry-After`.
A body sent without a length (chunked) is counted as it streams in and cut off at the cap (413).
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import Any, Awaitable, Callable

from deployment.serving.dialects import MAX_BODY_BYTES
from deployment.serving.errors import BodyTooLarge, error_response
from deployment.serving.state import Server

logger = logging.getLogger("deployment.serve")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
OPEN_PATHS = frozenset({"/live", "/health"})  # the platform's probes carry no key
GENERATION_PATHS = frozenset({"/v1/chat/completions", "/score", "/"})
RETRY_AFTER_S = 2


def is_loopback(host: str) -> bool:
    """True for a bind address only this machine can reach."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host of a Host header, without its port: "[::1]:5001" -> "::1", "localhost:80" -> "localhost"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Edge:
    """The header checks above, then the body cap while it streams, then the app."""

    def __init__(self, app: Any, *, server: Server, bind_host: str, api_key: str | None) -> None:
        self.app = app
        self.server = server
        self.allowed_hosts = (LOOPBACK_NAMES | {bind_host.strip("[]").lower()}) if is_loopback(bind_host) else None
        self.api_key = api_key
        self.held = 0  # generation requests inside the app right now (running or queued for the engine)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            status, message, extra = refusal
            logger.info("%s %s %d (refused: %s)", scope["method"], scope["path"], status, message.split(":")[0])
            await error_response(scope["path"], status, message, headers=extra)(scope, receive, send)
            return
        if scope["method"] == "POST" and scope["path"] in GENERATION_PATHS:
            self.held += 1
            try:
                await self.app(scope, capped(receive), send)
            finally:
                self.held -= 1
            return
        await self.app(scope, capped(receive), send)

    def refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, dict[str, str]] | None:
        """(status, message, extra headers) for a request refused on its headers, else None."""
        path, method = scope["path"], scope["method"]
        if self.allowed_hosts is not None and host_name(headers.get("host", "")) not in self.allowed_hosts:
            return 400, "this server answers only to localhost, 127.0.0.1 and [::1] (the Host header)", {}
        if self.api_key and path not in OPEN_PATHS and not self._authorized(headers.get("authorization", "")):
            return 401, "a valid API key is required: send Authorization: Bearer <key>", {"WWW-Authenticate": "Bearer"}
        if method == "POST":
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                return 415, f"send the body as JSON with Content-Type: application/json (got {media[:60] or 'none'!r})", {}
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                return 413, f"request body is larger than {MAX_BODY_BYTES} bytes", {"Connection": "close"}
            if path in GENERATION_PATHS and self.held >= self._bound():
                return 503, "the server is at its bound on requests held at once; retry shortly", \
                    {"Retry-After": str(RETRY_AFTER_S)}
        return None

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    def _bound(self) -> int:
        engine = self.server.engine
        return engine.limits.max_requests if engine is not None else 1 << 30  # loading: the routes answer 503


def capped(receive: Receive, limit: int = MAX_BODY_BYTES) -> Receive:
    """`receive` that raises BodyTooLarge (a 413) once the body, however it is framed, passes `limit` bytes."""
    seen = 0

    async def receive_capped() -> dict[str, Any]:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"request body is larger than {limit} bytes")
        return message

    return receive_capped
