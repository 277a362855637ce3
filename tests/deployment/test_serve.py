"""`python -m deployment.serve`: score.py under the real Azure ML inference server.

One server per module (startup is the slow part), serving the trainer's MLflow output laid out
the way Azure ML mounts a registered model, so the cloud's model discovery is exercised too.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from serving_helpers import free_port, post

pytestmark = pytest.mark.slow

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Who founded Microsoft?"},
]


def test_liveness_probe(inference_server: str) -> None:
    with urllib.request.urlopen(inference_server + "/", timeout=10) as response:
        assert response.status == 200
        assert response.headers["x-ms-server-version"].startswith("azmlinfsrv/")


@pytest.mark.parametrize(
    "body",
    [
        {"messages": MESSAGES, "max_tokens": 6, "temperature": 0.7, "top_p": 0.9},
        {"input_data": {"input_string": MESSAGES, "parameters": {"max_new_tokens": 6, "temperature": 0.0}}},
        {"input_data": ["Who founded Microsoft?"], "params": {"max_new_tokens": 6}},
        {"input_data": MESSAGES, "params": {"max_new_tokens": 6, "do_sample": True, "temperature": 0.8}},
    ],
    ids=["contract", "registry", "mlflow-text", "mlflow-messages"],
)
def test_all_request_shapes(inference_server: str, body: dict) -> None:
    status, answer = post(inference_server + "/score", body)
    assert status == 200, answer
    assert isinstance(answer["output"], str)
    assert answer["finish_reason"] in ("stop", "length")
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 5
    assert 1 <= usage["completion_tokens"] <= 6
    if answer["finish_reason"] == "length":
        assert usage["completion_tokens"] == 6


def test_token_limit_cuts_the_reply(inference_server: str) -> None:
    status, answer = post(inference_server + "/score", {"messages": MESSAGES, "max_tokens": 1})
    assert status == 200
    assert answer["usage"]["completion_tokens"] == 1
    # One token cannot hold an answer plus its <|end|>, so the reply was cut.
    assert answer["finish_reason"] == "length" or answer["output"] == ""


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "not valid JSON"),
        ({"messages": []}, "empty"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role"),
        ({"messages": MESSAGES, "max_tokens": 10**6}, "max_tokens"),
        ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"messages": MESSAGES, "temperature": 3}, "temperature"),
        ({"input_data": {"input_string": MESSAGES, "parameters": {"top_p": 0}}}, "top_p"),
        ({"messages": [{"role": "user", "content": "word " * 5000}]}, "context"),
    ],
    ids=["bad-json", "empty", "role", "max-tokens-cap", "max-tokens-zero", "temperature", "top-p", "too-long"],
)
def test_bad_requests_are_4xx_with_a_message(inference_server: str, body, message: str) -> None:
    status, answer = post(inference_server + "/score", body)
    assert status == 400
    assert message in answer["error"]


def _non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))  # no packet is sent: this only picks a route
            ip = sock.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_binds_loopback_only(inference_server: str) -> None:
    ip = _non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback address")
    port = int(inference_server.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection((ip, port), timeout=2).close()


# -- the command line ------------------------------------------------------------------------------


def _serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deployment.serve", *args], capture_output=True, text=True, timeout=timeout)


def test_help_is_instant_and_imports_nothing_heavy() -> None:
    started = time.perf_counter()
    result = _serve("--help")
    assert result.returncode == 0 and "--model-dir" in result.stdout and "--host" in result.stdout
    assert time.perf_counter() - started < 5
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, deployment.serve as s; s.build_parser();"
         "print(sorted(m for m in ('torch', 'transformers', 'azureml_inference_server_http') if m in sys.modules))"],
        capture_output=True, text=True, timeout=30,
    )
    assert probe.stdout.strip() == "[]"


def test_not_a_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    result = _serve("--model-dir", str(tmp_path), "--port", str(free_port()))
    assert result.returncode == 1
    assert result.stderr.startswith("error: no model found in")
    assert "Traceback" not in result.stderr


def test_busy_port_is_a_clear_error(tiny_model_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = _serve("--model-dir", str(tiny_model_dir), "--port", str(port))
    assert result.returncode == 1
    assert "already in use" in result.stderr
