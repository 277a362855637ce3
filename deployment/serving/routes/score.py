"""POST /score and POST /: the tutorials' three request dialects, each answered in its own shape.

`/` too: Azure ML may publish the scoring route itself (here `/`) as the endpoint's scoring URI, and
`az ml online-endpoint invoke` and the tutorials' clients post to that URI.
"""
from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from deployment.serving.dialects import decode_body, parse_score, score_reply
from deployment.serving.generation import complete_while_connected, prepare
from deployment.serving.state import EngineDep

logger = logging.getLogger("deployment.serve")
router = APIRouter()


@router.post("/")
@router.post("/score")
async def score(request: Request, engine: EngineDep) -> Any:
    chat = parse_score(decode_body(await request.body()), engine.limits.max_tokens_cap)
    ids, sampling = await prepare(engine, chat)
    text, finish_reason, completion_tokens = await complete_while_connected(
        request.receive, engine, ids, sampling, f"score-{uuid.uuid4().hex}")
    logger.info("score: shape=%s prompt_tokens=%d completion_tokens=%d finish=%s", chat.shape, len(ids),
                completion_tokens, finish_reason)
    return JSONResponse(score_reply(chat, text, finish_reason, len(ids), completion_tokens))
