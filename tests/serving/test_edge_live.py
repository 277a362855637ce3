"""The server's edge against the running server (`python -m deployment.serve` on the tiny twin), as a hostile
client would meet it: bodies refused before they are read, slow clients cut off, abandoned requests
cancelled, a burst past the bound turned away with Retry-After, and then normal service.

Parametrized by engine: transformers' continuous batching in .venv and vLLM's CPU build (`--engine vllm`, run
from .venv-vllm; without it the vLLM cases skip, and fail under `make test`, FINETUNE_PHI_REQUIRE_VLLM=1).
Each engine's server here is this module's own, started once: the tests read its log and its peak memory,
which another module's traffic would blur. Timing asserts are generous: each test asserts the mechanism (the
413 before the body, the server closing the sockets, the `aborted` and `finished` counts) and bounds time
only loosely.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from deployment.serving.protocol import HEADER_TIMEOUT_S
from serving.conftest import VLLM_START_S, require_vllm_venv
from serving.helpers import free_port, start_server, stop

pytestmark = pytest.mark.slow

ENGINES = ["transformers", pytest.param("vllm", marks=pytest.mark.vllm)]
MESSAGES = [{"role": "user", "content": "Tell me a very long story about the sea."}]
MB = 1_000_000


@pytest.fixture(scope="module", params=ENGINES)
def live(request, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[str, Path, int]]:
    """(base URL, server log, server pid) of the real server on the Phi-3.5 twin."""
    if request.param == "vllm":
        require_vllm_venv()
    log = tmp_path_factory.mktemp("edge") / "server.log"
    timeout = VLLM_START_S if request.param == "vllm" else 120.0
    process, base = start_server(tiny_model_dir, log, "--engine", request.param, timeout=timeout)
    try:
        yield base, log, process.pid
    finally:
        stop(process)


def _address(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


def _head(path: str, length: int, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


def _chat(max_tokens: int, content: str = MESSAGES[0]["content"]) -> bytes:
    body = json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                       "temperature": 0}).encode()
    return _head("/v1/chat/completions", len(body)) + body


def _status_line(sock: socket.socket, timeout: float = 10) -> str:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode()


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _health(base: str) -> dict:
    return requests.get(base + "/health", timeout=10).json()


def _wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout}s")


# -- refused before reading ----------------------------------------------------------------------------


def test_a_200mb_body_is_refused_before_memory_grows(live) -> None:
    base, _log, pid = live
    before = _peak_rss(pid)
    with socket.create_connection(_address(base)) as sock:
        sock.sendall(_head("/v1/chat/completions", 200 * MB))
        assert _status_line(sock) == "HTTP/1.1 413 Request Entity Too Large"
        sent = 0
        try:  # a client that sends its body anyway: the server has closed the connection
            while sent < 200 * MB:
                sent += sock.send(b" " * MB)
        except OSError:
            pass
    assert sent < 200 * MB
    assert _peak_rss(pid) - before < 50 * 1024 * 1024


def test_expect_100_continue_past_the_cap_gets_413_not_100(live) -> None:
    with socket.create_connection(_address(live[0])) as sock:
        sock.sendall(_head("/score", 10_000_000_000, "Expect: 100-continue\r\n"))
        assert _status_line(sock) == "HTTP/1.1 413 Request Entity Too Large"


def test_a_chunked_body_is_cut_off_while_it_streams(live) -> None:
    with socket.create_connection(_address(live[0])) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(40):  # 2.6 MB, past the 1 MB cap
                sock.sendall(b"10000\r\n" + b" " * 65536 + b"\r\n")
        except OSError:
            pass
        assert _status_line(sock) == "HTTP/1.1 413 Request Entity Too Large"


def test_text_plain_is_415(live) -> None:
    response = requests.post(live[0] + "/v1/chat/completions", data=json.dumps({"messages": MESSAGES}),
                             headers={"Content-Type": "text/plain"}, timeout=10)
    assert response.status_code == 415 and "application/json" in response.json()["error"]["message"]


def test_a_client_that_leaves_mid_upload_is_one_info_line(live) -> None:
    base, log, _pid = live
    for _ in range(5):
        with socket.create_connection(_address(base)) as sock:
            sock.sendall(_head("/v1/chat/completions", 5000) + b'{"messages": [')
            time.sleep(0.2)
    _wait_for(lambda: log.read_text().count("the client left before its request was read") >= 5, 10, "5 log lines")
    text = log.read_text()
    assert "Traceback" not in text and " 500 " not in text and "Exception in ASGI application" not in text


# -- slow clients ---------------------------------------------------------------------------------------


def test_slow_header_connections_are_closed_while_service_goes_on(live) -> None:
    base = live[0]
    slow = []
    for i in range(200):
        sock = socket.create_connection(_address(base))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        slow.append(sock)
    opened = time.monotonic()
    answer = requests.post(base + "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 4}, timeout=30)
    assert answer.status_code == 200
    for second in range(3):  # trickling bytes does not extend the deadline
        time.sleep(1)
        for sock in slow[:20]:
            sock.sendall(f"X-Slow-{second}: 1\r\n".encode())
    closed = 0
    for sock in slow:
        sock.settimeout(max(0.1, opened + HEADER_TIMEOUT_S + 10 - time.monotonic()))
        try:
            closed += sock.recv(1) == b""
        except ConnectionResetError:
            closed += 1
        except socket.timeout:
            pass
        sock.close()
    assert closed == 200
    assert time.monotonic() - opened < HEADER_TIMEOUT_S + 10


# -- requests stop when their client leaves; the bound on requests held -------------------------------------


def _send_and_leave(base: str, count: int, max_tokens: int) -> list[socket.socket]:
    socks = []
    for i in range(count):
        sock = socket.create_connection(_address(base))
        sock.sendall(_chat(max_tokens, f"Tell me a very long story about ship number {i}."))
        socks.append(sock)
    return socks


def test_abandoned_requests_are_cancelled(live) -> None:
    base = live[0]
    before = _health(base)
    socks = _send_and_leave(base, 40, 2000)
    _wait_for(lambda: (h := _health(base))["in_flight"] + h["waiting"] == 40, 30, "40 requests held")
    left = time.monotonic()
    for sock in socks:
        sock.close()  # the clients hang up
    after = _wait_for(lambda: (h := _health(base))["in_flight"] == 0 and h["waiting"] == 0 and h, 15, "all cancelled")
    assert after["aborted"] - before["aborted"] == 40  # every one was cancelled, queued or running
    slots = before["limits"]["max_sequences"]
    # Every request that got a slot gave it back (in_flight is 0 above). The first `slots` got one at once; a
    # queued request may take a slot freed by a hangup before its own hangup is seen, so up to 40 held one.
    assert min(40, slots) <= after["finished"] - before["finished"] <= 40
    started = time.monotonic()
    reply = requests.post(base + "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 4}, timeout=60)
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 4
    # 40 x 2000 tokens would take about a minute on 2 cores; cancelled, the next request waits for nothing.
    assert time.monotonic() - left < 20 and time.monotonic() - started < 10


def test_a_burst_past_the_bound_gets_503_with_retry_after_then_service(live) -> None:
    base = live[0]
    bound = _health(base)["limits"]["max_requests"]
    socks = _send_and_leave(base, bound, 2000)
    try:
        _wait_for(lambda: (h := _health(base))["in_flight"] + h["waiting"] == bound, 30, f"{bound} requests held")
        refused = requests.post(base + "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 4}, timeout=10)
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        assert requests.post(base + "/score", json={"messages": MESSAGES}, timeout=10).status_code == 503
        assert requests.get(base + "/health", timeout=10).status_code == 200  # the probes are never turned away
    finally:
        for sock in socks:
            sock.close()
    _wait_for(lambda: (h := _health(base))["in_flight"] + h["waiting"] == 0, 15, "the burst cancelled")
    served = requests.post(base + "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 4}, timeout=60)
    assert served.status_code == 200


def test_a_stream_whose_client_leaves_is_cancelled(live) -> None:
    base = live[0]
    before = _health(base)["aborted"]
    body = {"messages": MESSAGES, "max_tokens": 2000, "stream": True}
    with requests.post(base + "/v1/chat/completions", json=body, stream=True, timeout=30) as response:
        lines = response.iter_lines()
        assert next(lines).startswith(b"data: ")
    _wait_for(lambda: _health(base)["aborted"] == before + 1 and _health(base)["in_flight"] == 0, 15,
              "the stream cancelled")


# -- the command line -------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_binding_beyond_loopback_without_a_key_refuses_to_start(engine: str, tiny_model_dir: Path) -> None:
    if engine == "vllm":
        require_vllm_venv()  # `--engine vllm` runs the same command in .venv-vllm, which checks the key there
    result = subprocess.run([sys.executable, "-m", "deployment.serve", "--model-dir", str(tiny_model_dir),
                             "--engine", engine, "--host", "0.0.0.0", "--port", str(free_port())],
                            capture_output=True, text=True, timeout=120, env=_without_key())
    assert result.returncode == 1
    assert result.stderr.startswith("error: --host 0.0.0.0 serves beyond this machine, and no key is set")
    assert "Traceback" not in result.stderr


def _without_key() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "PHI_SERVE_API_KEY"}
