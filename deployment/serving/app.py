"""The HTTP API (docs/ARCHITECTURE.md section 5) over an `Engine`: OpenAI chat completions, models, health, /score.

Routes, and nothing else (no /load_model, /reset, /docs or /openapi.json):
  GET  /live                   200 while the process can serve (liveness; 503 once the engine's loop died)
  GET  /health                 200 once the model is loaded, 503 before (readiness)
  GET  /v1/models              the one served model
  POST /v1/chat/completions    OpenAI Chat Completions, streamed (SSE ending `data: [DONE]`) or not
  POST /score (and POST /)    the tutorials' three dialects, each answered in its own shape (`/`: Azure ML's scoring URI)

Every request passes the edge first (edge.py: Host, key, content type, body size, the bound on requests
held at once; protocol.py: read deadlines and the connection bound), then is validated in front of the
engine: the body's dialect and ranges (dialects.py), `max_tokens` against the cap and the prompt's token
count against the context cap (generation.py). Bad input is a 4xx with a JSON error, never a 500 (errors.py); logs carry sizes and
timings, never message content. The routes live in routes/ and read the `Server` from `app.state`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, Callable

from fastapi import FastAPI

from deployment.serving.edge import Edge
from deployment.serving.errors import install_error_handlers
from deployment.serving.routes import chat, probes, score
from deployment.serving.state import Server

logger = logging.getLogger("deployment.serve")
QUIET_PATHS = ("/live", "/health")  # probed every few seconds: not logged


class RequestLog:
    """One line per answered request: method, path, status, milliseconds (never a body or a header)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] in QUIET_PATHS:
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 0

        async def send_logged(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, send_logged)
        if status and status != 499:  # a client that left is logged once, where it is noticed
            logger.info("%s %s %d %.0fms", scope["method"], scope["path"], status, (time.perf_counter() - started) * 1e3)


def create_app(server: Server, on_startup: Callable[[], None] | None = None, *, bind_host: str = "127.0.0.1",
               api_key: str | None = None) -> FastAPI:
    """The FastAPI app; `on_startup` (loading the model in the background) runs when serving starts.
    `bind_host` decides which Host headers are answered; with `api_key` every route but the probes needs it."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if on_startup is not None:
            on_startup()
        yield
        if server.engine is not None:
            await asyncio.to_thread(server.engine.close)

    app = FastAPI(title="finetune-phi", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.server = server
    install_error_handlers(app)
    for router in (probes.router, chat.router, score.router):
        app.include_router(router)
    app.add_middleware(RequestLog)
    app.add_middleware(Edge, server=server, bind_host=bind_host, api_key=api_key)  # added last: outermost
    return app
