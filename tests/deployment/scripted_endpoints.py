"""Scripted OpenAI-compatible endpoints for the evaluation tests: real HTTP on 127.0.0.1, replies from a table.

`ScriptedEndpoint(answer)` serves `POST /v1/chat/completions` (OpenAI's chat.completion object, with
`finish_reason` and `usage`) and `GET /v1/models`; `answer(body)` returns the reply text, or
(text, finish_reason). It records every request body and checks the bearer key when one is set.
The policies below answer the fixture's conversations (tests/deployment/eval_sets.py) and its
instruction prompts the way the must-show tests need: concise and right, verbose and wrong, ...
"""
from __future__ import annotations

import json
import threading
from typing import Any, Callable

from fakes.json_http import JsonHandler, LocalHTTPServer

import eval_sets

Answer = Callable[[dict[str, Any]], "str | tuple[str, str]"]


class ScriptedEndpoint:
    def __init__(self, answer: Answer, *, key: str | None = None) -> None:
        self.answer, self.key = answer, key
        self.requests: list[dict[str, Any]] = []
        endpoint = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                self._send(200 if self.path == "/v1/models" else 404, {"object": "list", "data": [{"id": "scripted"}]})

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                endpoint.requests.append({"path": self.path, "body": body,
                                          "deployment": self.headers.get("azureml-model-deployment")})
                if endpoint.key is not None and self.headers.get("Authorization") != f"Bearer {endpoint.key}":
                    self._send(401, {"error": {"message": "bad key"}})
                    return
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                out = endpoint.answer(body)
                text, finish = (out, "stop") if isinstance(out, str) else out
                words = len(text.split())
                self._send(200, {"id": "chatcmpl-scripted", "object": "chat.completion", "created": 0, "model": "scripted",
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": finish}],
                                 "usage": {"prompt_tokens": 10, "completion_tokens": words, "total_tokens": 10 + words}})

        self.httpd = LocalHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "ScriptedEndpoint":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def last_user(body: dict[str, Any]) -> str:
    return [m for m in body.get("messages", []) if m.get("role") == "user"][-1]["content"]


CASES = {case.question: case for case in eval_sets.cases()}
PROMPTS = {p["prompt"]: p for p in eval_sets.instruction_prompts()}
PLAIN = "Here is a short answer to your request, written without any particular format."


def policy(conversation: Callable[[eval_sets.Case, int], str], instruction: Callable[[dict[str, Any]], str] | None = None
           ) -> Answer:
    """An endpoint's answers: `conversation(case, index)` for the fixture's questions, `instruction(prompt)` for the
    instruction prompts (default: a reply that follows every instruction)."""
    index = {q: i for i, q in enumerate(CASES)}
    follow = instruction or (lambda prompt: eval_sets.compliant_reply(prompt))

    def answer(body: dict[str, Any]) -> str:
        question = last_user(body)
        if question in CASES:
            return conversation(CASES[question], index[question])
        if question in PROMPTS:
            return follow(PROMPTS[question])
        return PLAIN

    return answer


CONCISE_RIGHT = policy(lambda case, i: case.answer)
"""Answers each question with the reference's first sentence."""
VERBOSE_WRONG = policy(lambda case, i: case.distractor)
"""Answers at the reference's length, in its style, with another entity's facts."""
VERBOSE_RIGHT = policy(lambda case, i: case.reference)
SWAPPED_10 = policy(lambda case, i: case.distractor_answer if i % 10 == 3 else case.answer)
"""Concise like CONCISE_RIGHT, but carries another entity's facts on every tenth question."""
IGNORES_INSTRUCTIONS = policy(lambda case, i: case.answer, lambda prompt: PLAIN)
