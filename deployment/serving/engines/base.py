"""The seam between the HTTP layer and an engine: what a request asks for, what comes back, the errors.

The app (deployment/serving/app.py and routes/) talks only to `Engine`: encode a conversation, stream
one generation, report health and limits. Each engine raises its own errors from here; the app
decides which HTTP status each one is.

Cancellation is part of the seam. The HTTP layer names every generation (`request_id`) and, when the
client leaves, calls `abort(request_id)` and cancels the task iterating `generate`, whether the
request is still queued or already decoding. An engine frees the sequence in `abort` (transformers:
`cancel_request`; vLLM: `AsyncLLM.abort`) and must also abort in `generate`'s own `finally`, so a
generation closed any other way never keeps decoding. `abort` of an unknown or finished id is a no-op.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from deployment.serving.limits import Limits


class EngineError(RuntimeError):
    """The engine failed a request (answered 500 with a short message; details go to the log)."""


class PromptRefused(ValueError):
    """The model's chat template refused the conversation (its `raise_exception`): the caller's error, a 400."""


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float  # 0: greedy
    top_p: float
    stop: tuple[str, ...] = ()
    adapter: str | None = None  # the LoRA adapter that answers (adapters.py); None: the base model


@dataclass
class Chunk:
    """A piece of a reply; the last one has `finish_reason` and the token count."""

    text: str
    finish_reason: str | None = None  # "stop" | "length" on the last chunk
    completion_tokens: int = 0


@dataclass
class Stats:
    """What /health reports; both engines keep it through their SequenceSlots (engines/slots.py)."""

    in_flight: int = 0  # requests admitted to the engine right now (at most limits.max_sequences)
    peak_in_flight: int = 0  # the most ever admitted at once (several: requests were batched together)
    waiting: int = 0  # requests queued in front of the engine
    finished: int = 0  # requests that held a slot and gave it back, whatever their end
    aborted: int = 0  # generations stopped because their client left (or they were closed early)


class Engine(Protocol):
    """What the HTTP layer needs from an engine."""

    model_id: str
    limits: "Limits"
    stats: Stats

    def describe(self) -> str: ...

    def encode(self, messages: list[dict[str, str]]) -> list[int]: ...

    def generate(self, prompt_ids: list[int], sampling: Sampling, request_id: str) -> AsyncIterator[Chunk]: ...

    def abort(self, request_id: str) -> None:
        """Stop this generation now, queued or running, and free what it holds (safe to call twice)."""

    def problem(self) -> str | None: ...

    def close(self) -> None: ...


def cut_at_stop(text: str, stop: tuple[str, ...]) -> int:
    """Where the first stop sequence starts in `text`, or -1."""
    return min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
