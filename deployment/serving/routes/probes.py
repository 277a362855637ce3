"""GET /live (liveness: the process can serve) and GET /health (readiness: the model is loaded)."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from deployment.serving.state import EngineDep, ServerDep

router = APIRouter()


@router.get("/live")
async def live(state: ServerDep) -> JSONResponse:
    # A loaded engine whose generation loop died cannot recover: fail liveness so the platform restarts us.
    problem = state.engine.problem() if state.engine is not None else None
    if problem:
        return JSONResponse({"status": "dead", "error": problem}, status_code=503)
    return JSONResponse({"status": "alive"})


@router.get("/health")
async def health(state: ServerDep, engine: EngineDep) -> JSONResponse:
    limits, stats = engine.limits, engine.stats
    return JSONResponse({
        "status": "ok", "model": state.model_id,
        "limits": {"context_tokens": limits.context_tokens, "max_tokens": limits.max_tokens_cap,
                   "max_sequences": limits.max_sequences, "max_requests": limits.max_requests},
        "in_flight": stats.in_flight, "waiting": stats.waiting, "peak_in_flight": stats.peak_in_flight,
        "finished": stats.finished, "aborted": stats.aborted,
    })
