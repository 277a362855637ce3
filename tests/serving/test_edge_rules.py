"""The server's edge in process (deployment/serving/edge.py, cli.py): the rules that need no model.

Host, key, content type and body size are checked on the headers, before a route reads the body; the
command refuses to bind beyond loopback without a key unless the gateway flag says a key is checked
in front (the Azure container's command, taken from the Dockerfile, passes).
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deployment.serving.app import create_app
from deployment.serving.cli import StartupError, build_parser, check_key
from deployment.serving.dialects import MAX_BODY_BYTES
from deployment.serving.edge import host_name, is_loopback
from deployment.serving.state import Server

LOCAL = "http://127.0.0.1"
KEY = "k" * 32
BODY = {"messages": [{"role": "user", "content": "hi"}]}
DOCKERFILE = Path(__file__).resolve().parents[2] / "deployment" / "serving" / "Dockerfile"


def _client(**app_args) -> TestClient:
    """The app before its model is loaded: a request that passes the edge gets the routes' 503 "loading"."""
    return TestClient(create_app(Server("phi"), **app_args), base_url=LOCAL)


@pytest.mark.parametrize("host, allowed", [("127.0.0.1:5001", True), ("localhost", True), ("[::1]:80", True),
                                           ("LOCALHOST:5001", True), ("evil.example:5001", False),
                                           ("127.0.0.1.nip.io", False), ("", False)])
def test_a_loopback_server_answers_only_to_loopback_names(host: str, allowed: bool) -> None:
    response = _client().get("/v1/models", headers={"host": host})
    assert response.status_code == (503 if allowed else 400), host
    if not allowed:
        assert "Host" in response.json()["error"]["message"]


def test_beyond_loopback_any_host_is_answered() -> None:
    client = TestClient(create_app(Server("phi"), bind_host="0.0.0.0"), base_url="http://phi.eastus.inference.ml.azure.com")
    assert client.get("/live").status_code == 200


def test_the_key_is_required_except_on_the_probes() -> None:
    client = _client(api_key=KEY)
    assert client.get("/live").status_code == 200
    assert client.get("/health").status_code == 503  # open, and still loading
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}):
        response = client.post("/v1/chat/completions", json=BODY, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert client.post("/score", json=BODY).status_code == 401
    ok = client.post("/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {KEY}"})
    assert ok.status_code == 503  # past the edge: the model is loading


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/score", "/"])
def test_json_routes_take_only_json(path: str, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = _client().post(path, content=json.dumps(BODY), headers=headers)
    assert response.status_code == 415
    ok = _client().post(path, content=json.dumps(BODY), headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 503


def test_a_declared_length_over_the_cap_is_413_unread() -> None:
    response = _client().post("/v1/chat/completions", content=b"{}",
                              headers={"content-type": "application/json", "content-length": str(MAX_BODY_BYTES + 1)})
    assert response.status_code == 413 and response.headers["connection"] == "close"


def test_a_chunked_body_is_cut_off_at_the_cap() -> None:
    from deployment.serving.engines.base import Stats

    class Loaded:  # past the "loading" 503: the route reads the body
        limits = type("L", (), {"max_tokens_cap": 8, "max_requests": 8})()
        stats = Stats()

        def problem(self):
            return None

    server = Server("phi")
    server.engine = Loaded()
    chunks = (b" " * 65536 for _ in range(MAX_BODY_BYTES // 65536 + 2))  # no length: sent chunked
    response = TestClient(create_app(server), base_url=LOCAL).post(
        "/v1/chat/completions", content=chunks, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.json()["error"]["message"]


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                            ("127.0.0.2", True), ("0.0.0.0", False), ("::", False),
                                            ("10.0.0.5", False), ("myhost", False)])
def test_loopback_binds(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_host_header_parsing() -> None:
    assert [host_name(h) for h in ("[::1]:5001", "LocalHost:80", "127.0.0.1", "::1")] == \
        ["::1", "localhost", "127.0.0.1", "::1"]


def test_beyond_loopback_needs_a_key_or_the_gateway_flag() -> None:
    with pytest.raises(StartupError, match="PHI_SERVE_API_KEY.*--keyless-behind-gateway"):
        check_key("0.0.0.0", None, False)
    with pytest.raises(StartupError, match="at least 16"):
        check_key("0.0.0.0", "short", False)
    check_key("0.0.0.0", KEY, False)
    check_key("0.0.0.0", None, True)
    check_key("127.0.0.1", None, False)


def test_the_azure_container_command_passes_the_gateway_flag() -> None:
    """The image's CMD binds 0.0.0.0 with the deliberate flag: the endpoint's key auth is the gate."""
    cmd = json.loads(DOCKERFILE.read_text().strip().splitlines()[-1].removeprefix("CMD "))[-1]
    argv = shlex.split(cmd.replace('"$AZUREML_MODEL_DIR"', "/models/phi/1"))
    args = build_parser().parse_args(argv[argv.index("--model-dir"):])
    assert args.host == "0.0.0.0" and args.keyless_behind_gateway and args.api_key is None
    check_key(args.host, args.api_key, args.keyless_behind_gateway)


def test_no_function_in_the_server_package_is_over_80_lines() -> None:
    import ast

    package = DOCKERFILE.parent
    long = [f"{path.relative_to(package)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in package.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert not long, long
