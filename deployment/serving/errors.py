"""Every failure as the JSON error its client reads: OpenAI's shape under /v1, {"error": "..."} elsewhere.

Request errors are 400 with their message; a body over the cap is 413; a missing model is 503; an engine
failure is a short 500 whose details go to the log (never the prompt or the reply). A client that left
(mid-upload, or while its reply was generated) is one info line: there is no one to answer.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from deployment.serving.dialects import RequestError
from deployment.serving.engines.base import EngineError, PromptRefused
from deployment.serving.state import Unavailable

logger = logging.getLogger("deployment.serve")

CONTEXT_CODE = "context_length_exceeded"


class BodyTooLarge(Exception):
    """A body that passed the cap while it streamed in (deployment/serving/edge.py): 413."""


class ClientGone(Exception):
    """The client closed its connection before its reply was ready; its request was cancelled."""


def openai_error(status: int, message: str, kind: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status, headers=headers)


def error_response(path: str, status: int, message: str, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The error body each kind of client reads: OpenAI's shape under /v1, {"error": "..."} elsewhere."""
    if path.startswith("/v1"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        return openai_error(status, message, kind, code, headers)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    message = "no such route" if err.status_code == 404 else str(err.detail)
    return error_response(request.url.path, err.status_code, message)


async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    return error_response(request.url.path, 400, "malformed request")


async def _request_error(request: Request, err: Exception) -> JSONResponse:
    code = CONTEXT_CODE if "context cap" in str(err) else None
    return error_response(request.url.path, 400, str(err), code)


async def _unavailable(request: Request, err: Unavailable) -> JSONResponse:
    return error_response(request.url.path, 503, str(err))


async def _engine_error(request: Request, err: EngineError) -> JSONResponse:
    logger.error("%s: engine error: %s", request.url.path, err)
    return error_response(request.url.path, 500, "generation failed; see the server log")


async def _body_too_large(request: Request, err: BodyTooLarge) -> JSONResponse:
    return error_response(request.url.path, 413, str(err), headers={"Connection": "close"})


async def _client_gone(request: Request, err: Exception) -> Response:
    when = "before its request was read" if isinstance(err, ClientDisconnect) else "before its reply; cancelled"
    logger.info("%s %s: the client left %s", request.method, request.url.path, when)
    return Response(status_code=499)  # nginx's "client closed request"; nobody reads it


async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    logger.error("%s: 500 %s: %.200s", request.url.path, type(err).__name__, err)
    return error_response(request.url.path, 500, f"internal error ({type(err).__name__}); see the server log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(PromptRefused, _request_error)
    app.add_exception_handler(Unavailable, _unavailable)
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(BodyTooLarge, _body_too_large)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
