"""What the routes share: the `Server` (the engine once loaded) and the dependency that hands it over."""
from __future__ import annotations

import time

from typing import Annotated

from fastapi import Depends, Request

from deployment.serving.engines.base import Engine


class Unavailable(Exception):
    """The model is not loaded (yet), or the engine stopped: 503."""


class Server:
    """Holds the engine once it is loaded; the routes read it through `server()` / `ready_engine()`."""

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


def server(request: Request) -> Server:
    """FastAPI dependency: the app's Server."""
    return request.app.state.server


def ready_engine(request: Request) -> Engine:
    """FastAPI dependency: the loaded, healthy engine, else Unavailable (503)."""
    return server(request).ready_engine()


ServerDep = Annotated[Server, Depends(server)]
EngineDep = Annotated[Engine, Depends(ready_engine)]
"""Route parameters: `state: ServerDep` gets the Server, `engine: EngineDep` the ready engine (else 503)."""
