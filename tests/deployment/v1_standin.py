"""A local HTTP stand-in for an Azure ML endpoint whose path forwarding is one of three unknowns.

No doc states where an Azure ML managed online endpoint forwards `/v1/...` paths for a custom
container, so deploy probes (deployment/endpoint_probe.py). This stand-in answers the way each
possible rule would make the real endpoint answer:

- `routes="host"`: `/v1/...` after the host reaches the server (and `/score`);
- `routes="score"`: only paths after the scoring route reach it (`/score/v1/...` and `/score`);
- `routes="none"`: only `/score` itself; every `/v1` path is a 404 from the endpoint.

`GET .../v1/models` returns the OpenAI model list, `POST .../v1/chat/completions` a chat completion
and `POST /score` the contract dialect, as deployment.serve answers them. Requests without the
bearer key get 401. Every request is recorded (method, path, deployment header).
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLY = "I am a fine-tuned Phi-3."
MODEL = "phi3-finetuned"


class V1StandIn:
    """Start with `with V1StandIn(routes, key) as endpoint:`; `endpoint.scoring_uri` is its `/score`."""

    def __init__(self, routes: str, key: str) -> None:
        assert routes in ("host", "score", "none")
        self.routes, self.key = routes, key
        self.requests: list[dict[str, Any]] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                self._answer("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._answer("POST")

            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                standin.requests.append({"method": method, "path": self.path,
                                         "deployment": self.headers.get("azureml-model-deployment")})
                if self.headers.get("Authorization") != f"Bearer {standin.key}":
                    return self._send(401, {"error": "bad key"})
                route = standin.route(self.path)
                if route is None:
                    return self._send(404, {"detail": "Not Found"})
                if route == "/v1/models" and method == "GET":
                    return self._send(200, {"object": "list", "data": [
                        {"id": MODEL, "object": "model", "created": 0, "owned_by": "finetune-phi"}]})
                if route == "/v1/chat/completions" and method == "POST":
                    return self._send(200, {
                        "id": "chatcmpl-standin", "object": "chat.completion", "created": 0, "model": MODEL,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}})
                if route == "/score" and method == "POST" and "messages" in body:
                    return self._send(200, {"output": REPLY, "finish_reason": "stop",
                                            "usage": {"prompt_tokens": 12, "completion_tokens": 7}})
                return self._send(405 if route else 404, {"detail": "Method Not Allowed"})

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.scoring_uri = self.host + "/score"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def route(self, path: str) -> str | None:
        """The server route a request path reaches under this forwarding rule, or None (the endpoint's 404)."""
        if path == "/score":
            return "/score"
        if self.routes == "host" and path.startswith("/v1/"):
            return path
        if self.routes == "score" and path.startswith("/score/v1/"):
            return path[len("/score"):]
        return None

    def __enter__(self) -> "V1StandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
