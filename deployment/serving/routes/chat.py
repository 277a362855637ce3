"""The OpenAI API: POST /v1/chat/completions (streamed as server-sent events, or not) and GET /v1/models."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from deployment.serving.dialects import ChatRequest, decode_body, parse_chat_completion
from deployment.serving.engines.base import Engine, EngineError, Sampling
from deployment.serving.errors import openai_error
from deployment.serving.generation import SSE_DONE, complete_while_connected, prepare, sse
from deployment.serving.state import EngineDep, Server, ServerDep

logger = logging.getLogger("deployment.serve")
router = APIRouter(prefix="/v1")


def _model_card(state: Server) -> dict:
    return {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "finetune-phi"}


@router.get("/models")
async def models(state: ServerDep, _engine: EngineDep) -> dict:
    return {"object": "list", "data": [_model_card(state)]}


@router.get("/models/{model_id:path}")
async def model(model_id: str, state: ServerDep, _engine: EngineDep) -> Any:
    if model_id != state.model_id:
        return openai_error(404, f"model {model_id[:100]!r} is not served here; this server serves "
                                 f"{state.model_id!r}", "invalid_request_error", "model_not_found")
    return _model_card(state)


@router.post("/chat/completions")
async def chat_completions(request: Request, state: ServerDep,
                           engine: EngineDep) -> Any:
    chat = parse_chat_completion(decode_body(await request.body()), engine.limits.max_tokens_cap)
    ids, sampling = await prepare(engine, chat)
    reply = _Reply(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), state.model_id, len(ids))
    if not chat.stream:
        text, finish_reason, completion_tokens = await complete_while_connected(
            request.receive, engine, ids, sampling, reply.request_id)
        return reply.completion(text, finish_reason, completion_tokens)
    # Starlette cancels the stream when its client leaves; _events then aborts the generation.
    return StreamingResponse(_events(engine, ids, sampling, chat, reply), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _Reply:
    """The shapes of one completion: the whole object, its stream chunks and the usage."""

    def __init__(self, completion_id: str, created: int, model_id: str, prompt_tokens: int) -> None:
        self.head = {"id": completion_id, "created": created, "model": model_id}
        self.request_id = completion_id
        self.prompt_tokens = prompt_tokens

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def completion(self, text: str, finish_reason: str, completion_tokens: int) -> dict:
        return {**self.head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish_reason, "logprobs": None}],
                "usage": self.usage(completion_tokens)}

    def chunk(self, delta: dict, finish_reason: str | None = None) -> bytes:
        return sse({**self.head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]})

    def usage_chunk(self, completion_tokens: int) -> bytes:
        return sse({**self.head, "object": "chat.completion.chunk", "choices": [],
                    "usage": self.usage(completion_tokens)})


async def _events(engine: Engine, ids: list[int], sampling: Sampling, chat: ChatRequest,
                  reply: _Reply) -> AsyncIterator[bytes]:
    yield reply.chunk({"role": "assistant", "content": ""})
    completion_tokens, finish_reason = 0, "length"
    try:
        async for piece in engine.generate(ids, sampling, reply.request_id):
            if piece.text:
                yield reply.chunk({"content": piece.text})
            if piece.finish_reason:
                finish_reason, completion_tokens = piece.finish_reason, piece.completion_tokens
    except EngineError as err:  # headers are sent: report it in the stream and end it
        logger.error("stream: engine error: %s", err)
        yield sse({"error": {"message": "generation failed; see the server log", "type": "server_error"}})
        yield SSE_DONE
        return
    except (asyncio.CancelledError, GeneratorExit):  # the client left mid-stream
        engine.abort(reply.request_id)
        logger.info("POST /v1/chat/completions: the client left mid-stream; cancelled")
        raise
    yield reply.chunk({}, finish_reason)
    if chat.include_usage:
        yield reply.usage_chunk(completion_tokens)
    yield SSE_DONE
