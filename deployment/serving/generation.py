"""One request through the engine: the prompt checked against the context cap, the reply collected or streamed.

A request whose client has gone is stopped, queued or running: a whole reply is generated while the
connection is watched (`complete_while_connected`), and a stream is cancelled by Starlette when its client
leaves. Either way the engine hears it through `Engine.abort` (engines/base.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Awaitable, Callable

from deployment.serving.dialects import ChatRequest, RequestError
from deployment.serving.engines.base import Chunk, Engine, Sampling
from deployment.serving.errors import ClientGone

CHARS_PER_TOKEN_BOUND = 64  # no tokenizer turns more characters than this into one token


async def prepare(engine: Engine, request: ChatRequest) -> tuple[list[int], Sampling]:
    """Tokenize and check the prompt against the context cap; the reply's budget is what remains."""
    limits = engine.limits
    if sum(len(m["content"]) for m in request.messages) > limits.context_tokens * CHARS_PER_TOKEN_BOUND:
        raise RequestError(f"the prompt is far longer than the context cap of {limits.context_tokens} tokens: "
                           "send a shorter conversation")
    ids = await asyncio.to_thread(engine.encode, request.messages)
    if len(ids) >= limits.context_tokens:
        raise RequestError(f"the prompt is {len(ids)} tokens; this server's context cap is {limits.context_tokens} "
                           "tokens (prompt and reply together): send a shorter conversation")
    max_new = min(request.max_tokens, limits.context_tokens - len(ids))  # near the cap the reply is cut: "length"
    return ids, Sampling(max_new, request.temperature, request.top_p, request.stop)


async def complete(engine: Engine, ids: list[int], sampling: Sampling, request_id: str) -> tuple[str, str, int]:
    """The whole reply: (text, finish_reason, completion tokens)."""
    parts: list[str] = []
    last = Chunk("")
    async for chunk in engine.generate(ids, sampling, request_id):
        parts.append(chunk.text)
        last = chunk
    return "".join(parts).strip(), last.finish_reason or "length", last.completion_tokens


async def _disconnected(receive: Callable[[], Awaitable[dict]]) -> None:
    """Returns when the client closes its connection (the body has been read: nothing else arrives)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def complete_while_connected(receive: Callable[[], Awaitable[dict]], engine: Engine, ids: list[int],
                                   sampling: Sampling, request_id: str) -> tuple[str, str, int]:
    """`complete`, cancelled (and aborted in the engine) as soon as the client leaves: ClientGone then."""
    work = asyncio.ensure_future(complete(engine, ids, sampling, request_id))
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this handler itself is cancelled (the server stopping)
        watch.cancel()
        if not work.done():
            work.cancel()
            engine.abort(request_id)
            with contextlib.suppress(asyncio.CancelledError):
                await work
    if work.cancelled():
        raise ClientGone(request_id)
    return work.result()


def sse(payload: Any) -> bytes:
    """One server-sent event carrying `payload` as JSON."""
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"
