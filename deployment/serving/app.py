"""The HTTP API (docs/ARCHITECTURE.md section 5) over an `Engine`: OpenAI chat completions, models, health, /score.

Routes, and nothing else (no /load_model, /reset, /docs or /openapi.json):
  GET  /live                   200 while the process can serve (liveness; 503 once the engine's loop died)
  GET  /health                 200 once the model is loaded, 503 before (readiness)
  GET  /v1/models              the one served model
  POST /v1/chat/completions    OpenAI Chat Completions, streamed (SSE ending `data: [DONE]`) or not
  POST /score (and POST /)    the tutorials' three dialects, each answered in its own shape (`/`: Azure ML's scoring URI)

Every request is validated here, in front of the engine: the body's dialect and ranges
(dialects.py), `max_tokens` against the cap and the prompt's token count against the context cap
(generation.py). Bad input is a 4xx with a JSON error, never a 500 (errors.py); logs carry sizes and
timings, never message content. The routes live in routes/ and read the `Server` from `app.state`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import FastAPI, Request

from deployment.serving.errors import install_error_handlers
from deployment.serving.routes import chat, probes, score
from deployment.serving.state import Server

logger = logging.getLogger("deployment.serve")
QUIET_PATHS = ("/live", "/health")  # probed every few seconds: not logged


async def _log_request(request: Request, call_next):
    started = time.perf_counter()
    response = await call_next(request)
    if request.url.path not in QUIET_PATHS:
        logger.info("%s %s %d %.0fms", request.method, request.url.path, response.status_code,
                    (time.perf_counter() - started) * 1e3)
    return response


def create_app(server: Server, on_startup: Callable[[], None] | None = None) -> FastAPI:
    """The FastAPI app; `on_startup` (loading the model in the background) runs when serving starts."""

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
    app.middleware("http")(_log_request)
    for router in (probes.router, chat.router, score.router):
        app.include_router(router)
    return app
