"""The scripted fake endpoint (a real HTTP server on 127.0.0.1) and small test helpers.

The only fake in the flow tests: it answers what each test scripts (status, body, headers, delay,
connection reset) and records every request (path, headers, decoded body) so tests can count
requests and inspect payloads. Unscripted, it answers like the two kinds of endpoint the flow
talks to: `POST /score` with the contract dialect's `{"output": ...}`, `POST /v1/chat/completions`
with an OpenAI chat completion in the API's real shape (`openai_completion`; the tests parse it with
the official `openai` client's types), any other path with 404.
"""
from __future__ import annotations

import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from fakes.json_http import LocalHTTPServer

KEY = "sk-test-0123456789abcdef-SECRET"  # long and unique: any leak is found by a substring search
ANSWER = "Bill Gates and Paul Allen founded Microsoft."
SCORE_PATH = "/score"
OPENAI_PATH = "/v1/chat/completions"
MODEL = "phi-tiny"


def openai_completion(
    content: str | None = ANSWER,
    finish_reason: str = "stop",
    prompt_tokens: int = 12,
    completion_tokens: int = 9,
) -> dict[str, Any]:
    """A non-streamed OpenAI chat completion, every field as the API sends it (`object`, `created`,
    `logprobs`, `refusal`, `annotations`, the token-detail objects, `system_fingerprint`...)."""
    return {
        "id": "chatcmpl-fake0123456789",
        "object": "chat.completion",
        "created": 1764400000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": None,
    }


def openai_error(message: str, code: str | None = None, type_: str = "invalid_request_error") -> dict[str, Any]:
    """The OpenAI API's error body."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


@dataclass
class Reply:
    """One scripted answer of the fake endpoint."""

    status: int = 200
    body: Any = field(default_factory=lambda: {"output": ANSWER, "finish_reason": "stop"})
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False  # close the connection with a TCP reset instead of answering
    raw: bool = False  # send `body` as is (a str), not JSON-encoded


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any
    at: float


class FakeEndpoint:
    """A scripted scoring endpoint; `queue()` the replies, read `requests` afterwards."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._script: list[Reply] = []
        self._lock = threading.Lock()
        self.default: Reply | None = None  # None: the unscripted answer of each path (see _unscripted)
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8")
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw
                reply = endpoint._record(self.path, dict(self.headers.items()), body)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.reset:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                data = (reply.body if reply.raw else json.dumps(reply.body)).encode("utf-8")
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "text/plain" if reply.raw else "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (timeout tests)

        self.server = LocalHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = self.base_url + SCORE_PATH
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _record(self, path: str, headers: dict[str, str], body: Any) -> Reply:
        with self._lock:
            self.requests.append(Recorded(path, headers, body, time.monotonic()))
            if self._script:
                return self._script.pop(0)
            return self.default or _unscripted(path)

    def queue(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._script.clear()
            self.default = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def _unscripted(path: str) -> Reply:
    if path == SCORE_PATH:
        return Reply()
    if path == OPENAI_PATH:
        return Reply(body=openai_completion())
    return Reply(404, {"detail": "Not Found"})


def files_containing(root: Path, needle: str) -> list[Path]:
    """Every file under root whose bytes contain needle."""
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            hits.append(path)
    return hits
