"""`pf flow serve` answering POST /score, on the fake endpoint: the README's serving command."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from deployment.connection import write_phi_connection
from fake_endpoint import ANSWER, KEY, Reply
from common.processes import free_port, stop_group

pytestmark = pytest.mark.slow  # one `pf flow serve` for the module: seconds to start


@pytest.fixture(scope="module")
def served_flow(fake_server, flow_copy: Path, pf_ready: Path, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """`pf flow serve` on a free 127.0.0.1 port; always killed (its whole process group)."""
    write_phi_connection(fake_server.url, KEY)
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    cmd = [
        str(Path(sys.executable).with_name("pf")), "flow", "serve", "--source", str(flow_copy),
        "--port", str(port), "--host", "127.0.0.1", "--skip-open-browser",
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ), cwd=log.parent,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"pf flow serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"pf flow serve not ready after 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield base, log
    finally:
        _stop(proc)
        assert proc.poll() is not None, "pf flow serve is still running"


def _stop(proc: subprocess.Popen) -> None:
    stop_group(proc)


def test_serve_answers_score_with_history(served_flow, fake) -> None:
    base, log = served_flow
    history = [{"inputs": {"question": "Hi"}, "outputs": {"answer": "Hello!"}}]
    response = requests.post(
        f"{base}/score", json={"question": "Who founded Microsoft?", "chat_history": history}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"answer": ANSWER}
    (request,) = fake.requests
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert [m["content"] for m in request.body["messages"]] == ["Hi", "Hello!", "Who founded Microsoft?"]


def test_serve_rejects_a_missing_question_instead_of_answering_a_default(served_flow, fake) -> None:
    base, _ = served_flow
    response = requests.post(f"{base}/score", json={}, timeout=60)
    assert response.status_code == 400
    assert "question is empty" in response.json()["error"]["message"]
    assert fake.requests == []


def test_serve_passes_the_endpoint_error_through_without_the_key(served_flow, fake) -> None:
    base, log = served_flow
    fake.queue(Reply(401, {"error": "invalid key"}))
    response = requests.post(f"{base}/score", json={"question": "Who founded Microsoft?"}, timeout=60)
    assert response.status_code >= 400
    assert "key is wrong or was rotated" in response.text
    assert KEY not in response.text
    assert KEY not in log.read_text()
