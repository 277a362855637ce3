"""Fixtures for the deploy, rollout and teardown tests (a pytest plugin: tests/conftest.py registers it).

- `outputs_file` / `outputs`: a complete stack-outputs JSON (docs/ARCHITECTURE.md section 3).
- `scoring_server`: a real HTTP endpoint on 127.0.0.1 standing in for the deployment's /score;
  it checks the bearer key and records the `azureml-model-deployment` header.
- `fake_client`: the MLClient fake whose endpoints' scoring URI points at that server, and whose
  call log also receives the server's requests (so the smoke test's place in the order shows).
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Iterator

import pytest

from deployment.connection import PhiConnection
from fakes.json_http import JsonHandler, LocalHTTPServer
from fakes.ml_client import SECRET_KEY, Call, FakeMLClient
from infra.outputs import REQUIRED_KEYS, StackOutputs

UAI_ID = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-phi/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-phi"
OUTPUTS = {
    "subscription_id": "00000000-0000-0000-0000-000000000001",
    "tenant_id": "00000000-0000-0000-0000-000000000002",
    "resource_group_name": "rg-phi",
    "location": "eastus",
    "workspace_name": "mlw-phi",
    "storage_account_name": "stphi123",
    "container_registry_name": "crphi123",
    "key_vault_name": "kv-phi-123",
    "compute_name": "a100-cluster",
    "compute_vm_size": "Standard_NC24ads_A100_v4",
    "compute_max_nodes": 1,
    "uai_name": "uai-phi",
    "uai_resource_id": UAI_ID,
    "uai_client_id": "11111111-2222-3333-4444-555555555555",
    "uai_principal_id": "66666666-7777-8888-9999-000000000000",
    "endpoint_uai_name": "uai-phi-endpoint",
    "endpoint_uai_resource_id": UAI_ID + "-endpoint",
    "endpoint_uai_client_id": "77777777-2222-3333-4444-555555555555",
    "endpoint_uai_principal_id": "88888888-7777-8888-9999-000000000000",
}
assert set(OUTPUTS) == set(REQUIRED_KEYS)


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private FINETUNE_PHI_RUNS for one test, holding the default eval file runs/data/test.jsonl."""
    root = tmp_path / "runs"
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(root))
    (root / "data").mkdir(parents=True)
    (root / "data" / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in EVAL_ROWS), encoding="utf-8")
    return root


@pytest.fixture
def eval_file(tmp_path: Path) -> Path:
    """Held-out conversations the fake scoring server knows the answers to."""
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in EVAL_ROWS), encoding="utf-8")
    return path


@pytest.fixture
def outputs_file(tmp_path: Path) -> Path:
    path = tmp_path / "stack-outputs.json"
    path.write_text(json.dumps(OUTPUTS), encoding="utf-8")
    return path


@pytest.fixture
def outputs(outputs_file: Path) -> StackOutputs:
    return StackOutputs.from_mapping(OUTPUTS, source=str(outputs_file))


EVAL_ROWS = [
    {"messages": [{"role": "user", "content": f"What is the capital of country number {i}?"},
                  {"role": "assistant", "content": f"The capital of country number {i} is City {i}, on the river R{i}."}]}
    for i in range(12)
]
EVAL_LIMIT = len(EVAL_ROWS)
"""The rollout tests' gate: every held-out row and as many instruction prompts (not the default 200,
which would only repeat the same fake answer and take seconds per deploy)."""
SMOKE_REPLY = "I am a fine-tuned Phi-3."


class ScoringServer:
    """Answers like a deployment running the project's server (OpenAI chat completions at
    /v1/chat/completions and the model list at GET /v1/models, the contract dialect at /score);
    `mode` = ok | error | empty.

    A good deployment answers each held-out question with its reference reply (EVAL_ROWS); the
    deployments named in `worse` answer the smoke test but not the questions.

    `routes` is the endpoint's path forwarding, which no doc states for custom containers (deploy
    probes it, deployment/endpoint_probe.py): "host" (`/v1/...` after the host reaches the server),
    "score" (only `/score/v1/...`, after the scoring route) or "none" (only `/score` itself); any
    other path is the endpoint's 404. The probe's GETs are kept in `probes`, apart from `requests`.
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.routes = "host"
        self.worse: set[str] = set()
        self.requests: list[dict] = []
        self.probes: list[str] = []
        self.log: list[Call] | None = None
        server = self
        references = {row["messages"][0]["content"]: row["messages"][1]["content"] for row in EVAL_ROWS}

        class Handler(JsonHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                server.probes.append(self.path)
                if self.headers.get("Authorization") != f"Bearer {SECRET_KEY}":
                    self._send(401, {"error": "bad key"})
                elif server.route(self.path) == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "phi", "object": "model", "owned_by": "finetune-phi"}]})
                else:
                    self._send(404, {"detail": "Not Found"})

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                deployment = self.headers.get("azureml-model-deployment")
                authorized = self.headers.get("Authorization") == f"Bearer {SECRET_KEY}"
                server.requests.append({"path": self.path, "deployment": deployment, "authorized": authorized, "body": body})
                if server.log is not None:
                    server.log.append(Call("http", "POST", {"deployment": deployment}))
                route = server.route(self.path)
                if route is None:
                    self._send(404, {"detail": "Not Found"})
                elif not authorized:
                    self._send(401, {"error": "bad key"})
                elif server.mode == "error":
                    self._send(500, {"error": "model failed to generate"})
                else:
                    question = (body.get("messages") or [{}])[-1].get("content", "")
                    good = deployment not in server.worse and question in references
                    text = "" if server.mode == "empty" else references[question] if good else SMOKE_REPLY
                    self._send(200, self._openai(text) if route.startswith("/v1/") else
                               {"output": text, "finish_reason": "stop", "usage": {"prompt_tokens": 12, "completion_tokens": 7}})

            @staticmethod
            def _openai(text: str) -> dict:
                """OpenAI's chat.completion object, as deployment.serve answers it."""
                return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "phi",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}}

        self.httpd = LocalHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = self.host + "/score"

    def route(self, path: str) -> str | None:
        """The server route a request path reaches under `routes`, or None (the endpoint's 404)."""
        if path == "/score":
            return "/score"
        if self.routes == "host" and path.startswith("/v1/"):
            return path
        if self.routes == "score" and path.startswith("/score/v1/"):
            return path.removeprefix("/score")
        return None


@pytest.fixture
def scoring_server() -> Iterator[ScoringServer]:
    server = ScoringServer()
    thread = threading.Thread(target=server.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def fake_client(scoring_server: ScoringServer) -> FakeMLClient:
    client = FakeMLClient(scoring_uri=scoring_server.url, workspace_name=OUTPUTS["workspace_name"])
    scoring_server.log = client.calls
    return client


@pytest.fixture
def connection_writes() -> list[dict]:
    return []


@pytest.fixture
def write_connection(connection_writes: list[dict], fake_client: FakeMLClient):
    """Records what would go into the Prompt flow connection store (the key included, for the assertion)."""

    def write(connection: PhiConnection) -> None:
        fake_client.calls.append(Call("connection", "write", {"endpoint": connection.endpoint, "deployment": connection.deployment}))
        connection_writes.append({"endpoint": connection.endpoint, "key": connection.key,
                                  "deployment": connection.deployment, "configs": connection.configs()})

    return write
