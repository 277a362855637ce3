"""One request through the engine: the prompt checked against the context cap, the reply collected or streamed."""
from __future__ import annotations

import asyncio
import json
from typing import Any

from deployment.serving.dialects import ChatRequest, RequestError
from deployment.serving.engines.base import Chunk, Engine, Sampling

CHARS_PER_TOKEN_BOUND = 64  # no tokenizer turns more characters than this into one token


async def prepare(engine: Engine, request: ChatRequest, adapter: str | None = None) -> tuple[list[int], Sampling]:
    """Tokenize and check the prompt against the context cap; the reply's budget is what remains.
    `adapter`: the LoRA adapter that answers (ModelNames.pick), None for the base model."""
    limits = engine.limits
    if sum(len(m["content"]) for m in request.messages) > limits.context_tokens * CHARS_PER_TOKEN_BOUND:
        raise RequestError(f"the prompt is far longer than the context cap of {limits.context_tokens} tokens: "
                           "send a shorter conversation")
    ids = await asyncio.to_thread(engine.encode, request.messages)
    if len(ids) >= limits.context_tokens:
        raise RequestError(f"the prompt is {len(ids)} tokens; this server's context cap is {limits.context_tokens} "
                           "tokens (prompt and reply together): send a shorter conversation")
    max_new = min(request.max_tokens, limits.context_tokens - len(ids))  # near the cap the reply is cut: "length"
    return ids, Sampling(max_new, request.temperature, request.top_p, request.stop, adapter)


async def complete(engine: Engine, ids: list[int], sampling: Sampling) -> tuple[str, str, int]:
    """The whole reply: (text, finish_reason, completion tokens)."""
    parts: list[str] = []
    last = Chunk("")
    async for chunk in engine.generate(ids, sampling):
        parts.append(chunk.text)
        last = chunk
    return "".join(parts).strip(), last.finish_reason or "length", last.completion_tokens


def sse(payload: Any) -> bytes:
    """One server-sent event carrying `payload` as JSON."""
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"
