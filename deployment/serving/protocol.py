"""The HTTP/1.1 connection: uvicorn's h11 protocol with the read deadlines and the connection bound it lacks.

uvicorn 0.54 gives, and the server uses: a cap on the request line and headers (h11's
`max_incomplete_event_size`: a longer head is a 400) and the keep-alive timeout (an idle connection
after a response). It has no deadline for reading a request's headers or its body: a client that
sends one header byte every few seconds holds its connection, and a task, for ever. This protocol adds:
  - a header deadline: the request line and headers must arrive within HEADER_TIMEOUT_S of the
    connection opening (or of the previous response); else the connection is closed;
  - a body deadline: the whole body within BODY_TIMEOUT_S of its headers; else the connection is
    closed and the request ends as a client that left (one info line, never a 500);
  - a bound on open connections: past MAX_CONNECTIONS a new connection is closed at once.
Deadlines are absolute, not idle timers: trickling bytes does not extend them.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("deployment.serve")

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0  # a 1 MB body (the cap) needs only 33 KB/s
KEEP_ALIVE_S = 5  # uvicorn's own: an idle connection after a response
MAX_HEADER_BYTES = 16 * 1024  # h11's own cap on the request line and headers (uvicorn's default, made explicit)
MAX_CONNECTIONS = 512


def uvicorn_settings() -> dict[str, Any]:
    """The uvicorn.Config arguments for this protocol and uvicorn's own limits."""
    return {"http": GuardedH11Protocol, "timeout_keep_alive": KEEP_ALIVE_S,
            "h11_max_incomplete_event_size": MAX_HEADER_BYTES}


class GuardedH11Protocol(H11Protocol):
    """uvicorn's H11Protocol plus a header deadline, a body deadline and a bound on open connections."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        super().connection_made(transport)
        if len(self.connections) > MAX_CONNECTIONS:
            logger.warning("refused a connection: %d are open (the bound is %d)", len(self.connections) - 1,
                           MAX_CONNECTIONS)
            transport.close()
            return
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def _watch(self) -> None:
        """Arm the deadline of the phase the client is in: sending headers, sending a body, or neither."""
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        phase = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase == self._phase:
            return
        self._cancel_deadline()
        self._phase = phase
        if phase is not None:
            timeout = HEADER_TIMEOUT_S if phase == "headers" else BODY_TIMEOUT_S
            self._deadline = self.loop.call_later(timeout, self._timed_out, phase, timeout)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self, phase: str, timeout: float) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            logger.info("closed a connection: its request %s took over %.0fs", phase, timeout)
            self.transport.close()
