"""The HTTP API (docs/ARCHITECTURE.md section 5) over an `Engine`: OpenAI chat completions, models, health, /score.

Routes, and nothing else (no /load_model, /reset, /docs or /openapi.json):
  GET  /live                   200 while the process can serve (liveness; 503 once the engine's loop died)
  GET  /health                 200 once the model is loaded, 503 before (readiness)
  GET  /v1/models              the one served model
  POST /v1/chat/completions    OpenAI Chat Completions, streamed (SSE ending `data: [DONE]`) or not
  POST /score (and POST /)    the tutorials' three dialects, each answered in its own shape (`/`: Azure ML's scoring URI)

Every request is validated here, in front of the engine: the body's dialect and ranges
(deployment/dialects.py), `max_tokens` against the cap and the prompt's token count against the
context cap. Bad input is a 4xx with a JSON error, never a 500; logs carry sizes and timings,
never message content.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployment.dialects import ChatRequest, RequestError, decode_body, parse_chat_completion, parse_score, score_reply
from deployment.engine import Chunk, Engine, EngineError, Sampling

logger = logging.getLogger("deployment.serve")


class Unavailable(Exception):
    """The model is not loaded (yet), or the engine stopped: 503."""


def _openai_error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status)


def _error(path: str, status: int, message: str, code: str | None = None) -> JSONResponse:
    """The error body each kind of client reads: OpenAI's shape under /v1, {"error": "..."} elsewhere."""
    if path.startswith("/v1"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        return _openai_error(status, message, kind, code)
    return JSONResponse({"error": message}, status_code=status)


class Server:
    """Holds the engine once it is loaded; the app's routes read it from here."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.created = int(time.time())

    def ready_engine(self) -> Engine:
        if self.engine is None:
            raise Unavailable(self.load_error or "the model is still loading; retry in a moment")
        problem = self.engine.problem()
        if problem:
            raise Unavailable(problem)
        return self.engine


async def _prompt(engine: Engine, request: ChatRequest) -> tuple[list[int], Sampling]:
    """Tokenize and check the prompt against the context cap; the reply's budget is what remains."""
    limits = engine.limits
    if sum(len(m["content"]) for m in request.messages) > limits.context_tokens * 64:
        raise RequestError(f"the prompt is far longer than the context cap of {limits.context_tokens} tokens: "
                           "send a shorter conversation")
    ids = await asyncio.to_thread(engine.encode, request.messages)
    if len(ids) >= limits.context_tokens:
        raise RequestError(f"the prompt is {len(ids)} tokens; this server's context cap is {limits.context_tokens} "
                           "tokens (prompt and reply together): send a shorter conversation")
    max_new = min(request.max_tokens, limits.context_tokens - len(ids))  # near the cap the reply is cut: "length"
    return ids, Sampling(max_new, request.temperature, request.top_p, request.stop)


async def _complete(engine: Engine, ids: list[int], sampling: Sampling) -> tuple[str, str, int]:
    parts: list[str] = []
    last = Chunk("")
    async for chunk in engine.generate(ids, sampling):
        parts.append(chunk.text)
        last = chunk
    return "".join(parts).strip(), last.finish_reason or "length", last.completion_tokens


def _sse(payload: Any) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def create_app(server: Server, on_startup: Callable[[], None] | None = None) -> FastAPI:
    """The FastAPI app; `on_startup` (loading the model in the background) runs when serving starts."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if on_startup is not None:
            on_startup()
        yield
        if server.engine is not None:
            await asyncio.to_thread(server.engine.close)

    app = FastAPI(title="finetune-phi", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = "no such route" if err.status_code == 404 else str(err.detail)
        return _error(request.url.path, err.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        return _error(request.url.path, 400, "malformed request")

    @app.exception_handler(RequestError)
    async def request_error(request: Request, err: RequestError) -> JSONResponse:
        code = "context_length_exceeded" if "context cap" in str(err) else None
        return _error(request.url.path, 400, str(err), code)

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, err: Unavailable) -> JSONResponse:
        return _error(request.url.path, 503, str(err))

    @app.exception_handler(EngineError)
    async def engine_error(request: Request, err: EngineError) -> JSONResponse:
        logger.error("%s: engine error: %s", request.url.path, err)
        return _error(request.url.path, 500, "generation failed; see the server log")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        logger.error("%s: 500 %s: %.200s", request.url.path, type(err).__name__, err)
        return _error(request.url.path, 500, f"internal error ({type(err).__name__}); see the server log")

    @app.middleware("http")
    async def log_requests(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        if request.url.path not in ("/live", "/health"):
            logger.info("%s %s %d %.0fms", request.method, request.url.path, response.status_code,
                        (time.perf_counter() - started) * 1e3)
        return response

    @app.get("/live")
    async def live() -> JSONResponse:
        # A loaded engine whose generation loop died cannot recover: fail liveness so the platform restarts us.
        problem = server.engine.problem() if server.engine is not None else None
        if problem:
            return JSONResponse({"status": "dead", "error": problem}, status_code=503)
        return JSONResponse({"status": "alive"})

    @app.get("/health")
    async def health() -> JSONResponse:
        engine = server.ready_engine()
        limits, stats = engine.limits, engine.stats
        return JSONResponse({
            "status": "ok", "model": server.model_id,
            "limits": {"context_tokens": limits.context_tokens, "max_tokens": limits.max_tokens_cap,
                       "max_sequences": limits.max_sequences},
            "in_flight": stats.in_flight, "waiting": stats.waiting, "peak_in_flight": stats.peak_in_flight,
        })

    def model_card() -> dict:
        return {"id": server.model_id, "object": "model", "created": server.created, "owned_by": "finetune-phi"}

    @app.get("/v1/models")
    async def models() -> dict:
        server.ready_engine()
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Any:
        server.ready_engine()
        if model_id != server.model_id:
            return _openai_error(404, f"model {model_id[:100]!r} is not served here; this server serves "
                                      f"{server.model_id!r}", "invalid_request_error", "model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        engine = server.ready_engine()
        chat = parse_chat_completion(decode_body(await request.body()), engine.limits.max_tokens_cap)
        ids, sampling = await _prompt(engine, chat)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if not chat.stream:
            text, finish_reason, completion_tokens = await _complete(engine, ids, sampling)
            return {
                "id": completion_id, "object": "chat.completion", "created": created, "model": server.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish_reason, "logprobs": None}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": completion_tokens,
                          "total_tokens": len(ids) + completion_tokens},
            }

        def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
            return _sse({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                         "model": server.model_id,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]})

        async def events() -> AsyncIterator[bytes]:
            yield chunk({"role": "assistant", "content": ""})
            completion_tokens, finish_reason = 0, "length"
            try:
                async for piece in engine.generate(ids, sampling):
                    if piece.text:
                        yield chunk({"content": piece.text})
                    if piece.finish_reason:
                        finish_reason, completion_tokens = piece.finish_reason, piece.completion_tokens
            except EngineError as err:  # headers are sent: report it in the stream and end it
                logger.error("stream: engine error: %s", err)
                yield _sse({"error": {"message": "generation failed; see the server log", "type": "server_error"}})
                yield b"data: [DONE]\n\n"
                return
            yield chunk({}, finish_reason)
            if chat.include_usage:
                yield _sse({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                            "model": server.model_id, "choices": [],
                            "usage": {"prompt_tokens": len(ids), "completion_tokens": completion_tokens,
                                      "total_tokens": len(ids) + completion_tokens}})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # `/` too: Azure ML may publish the scoring route itself (here `/`) as the endpoint's scoring URI,
    # and `az ml online-endpoint invoke` and the tutorials' clients post to that URI.
    @app.post("/")
    @app.post("/score")
    async def score(request: Request) -> Any:
        engine = server.ready_engine()
        chat = parse_score(decode_body(await request.body()), engine.limits.max_tokens_cap)
        ids, sampling = await _prompt(engine, chat)
        text, finish_reason, completion_tokens = await _complete(engine, ids, sampling)
        logger.info("score: shape=%s prompt_tokens=%d completion_tokens=%d finish=%s", chat.shape, len(ids),
                    completion_tokens, finish_reason)
        return JSONResponse(score_reply(chat, text, finish_reason, len(ids), completion_tokens))

    return app
