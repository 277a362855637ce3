"""flows/chat under the real promptflow runtime, against the fake endpoint on 127.0.0.1.

The connection is written by `deployment.connection.write_phi_connection` (as deploy does), the
flow runs on a copy of flows/chat in a temp folder (in-process `PFClient().test`, and once through
the `pf flow test` CLI), and every test checks that the key shows up in no output.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployment.connection import write_phi_connection
from fake_endpoint import ANSWER, KEY, OPENAI_PATH, Reply, files_containing, openai_completion, openai_error

HISTORY = [
    {"inputs": {"question": "Hi, who are you?"}, "outputs": {"answer": "A small Phi-3 model."}},
    {"inputs": {"question": "What can you do?"}, "outputs": {"answer": "Answer questions."}},
]


@pytest.fixture(autouse=True)
def key_never_printed(capfd):
    """After each test: the key is in nothing written to stdout or stderr (logs included)."""
    yield
    out, err = capfd.readouterr()
    assert KEY not in out and KEY not in err


@pytest.fixture
def connect(fake, pf_ready):
    """Point the phi_endpoint connection at the fake endpoint (the way deploy writes it)."""

    def _connect(endpoint: str | None = None, **kwargs) -> None:
        write_phi_connection(endpoint or fake.url, KEY, **kwargs)

    _connect()
    return _connect


def run_flow(pf_client, flow: Path, question, history=None) -> dict:
    inputs = {"question": question}
    if history is not None:
        inputs["chat_history"] = history
    return pf_client.test(flow=str(flow), inputs=inputs)


def flow_error(pf_client, flow: Path, question="Who founded Microsoft?", **kwargs) -> str:
    with pytest.raises(Exception) as info:
        run_flow(pf_client, flow, question, **kwargs)
    message = str(info.value)
    assert KEY not in message and KEY not in repr(info.value)
    return message


@pytest.mark.parametrize(
    ("body", "raw"),
    [
        ({"output": ANSWER, "finish_reason": "stop", "usage": {"prompt_tokens": 5, "completion_tokens": 9}}, False),
        ([ANSWER], False),
        ([{"0": ANSWER}], False),
        (ANSWER, False),  # a bare JSON string
        ('{"output": "%s"}' % ANSWER, False),  # json.dumps(...) returned by an MLflow-style run()
    ],
    ids=["contract", "list-of-text", "mlflow-0-key", "bare-string", "json-in-string"],
)
def test_flow_reads_every_response_shape(pf_client, flow_copy, fake, connect, body, raw) -> None:
    fake.queue(Reply(body=body, raw=raw))
    assert run_flow(pf_client, flow_copy, "Who founded Microsoft?") == {"answer": ANSWER}
    (request,) = fake.requests
    assert request.headers["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("request_format", ["contract", "registry", "mlflow"])
def test_flow_sends_the_request_format_of_the_connection(pf_client, flow_copy, fake, connect, request_format) -> None:
    connect(request_format=request_format, deployment="green", max_tokens=40, temperature=0.2)
    assert run_flow(pf_client, flow_copy, "Who founded Microsoft?", HISTORY) == {"answer": ANSWER}
    (request,) = fake.requests
    assert request.headers["azureml-model-deployment"] == "green"
    body = request.body
    if request_format == "contract":
        messages, params = body["messages"], body
        assert (params["max_tokens"], params["temperature"]) == (40, 0.2)
    elif request_format == "registry":
        messages, params = body["input_data"]["input_string"], body["input_data"]["parameters"]
        assert (params["max_new_tokens"], params["temperature"], params["do_sample"]) == (40, 0.2, True)
    else:
        messages, params = body["input_data"], body["params"]
        assert (params["max_new_tokens"], params["temperature"]) == (40, 0.2)
    assert messages[-1] == {"role": "user", "content": "Who founded Microsoft?"}


def test_flow_speaks_openai_when_the_connection_says_so(pf_client, flow_copy, fake, connect) -> None:
    """Deploy writes api=openai and the base URL for this project's server: the flow calls /v1/chat/completions."""
    connect(endpoint=fake.base_url, api="openai", deployment="green", max_tokens=40)
    fake.queue(Reply(body=openai_completion("Gates and Allen.")))
    assert run_flow(pf_client, flow_copy, "Who founded Microsoft?", HISTORY) == {"answer": "Gates and Allen."}
    (request,) = fake.requests
    assert request.path == OPENAI_PATH
    assert request.headers["azureml-model-deployment"] == "green"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.body["max_tokens"] == 40
    assert request.body["messages"][0] == {"role": "user", "content": "Hi, who are you?"}
    assert request.body["messages"][-1] == {"role": "user", "content": "Who founded Microsoft?"}


def test_flow_openai_errors_are_one_clear_message(pf_client, flow_copy, fake, connect) -> None:
    connect(endpoint=fake.base_url, api="openai")
    fake.queue(Reply(400, openai_error("prompt is 9000 tokens; this server takes at most 4096")))
    message = flow_error(pf_client, flow_copy)
    assert "HTTP 400" in message and "at most 4096" in message


def test_a_connection_without_api_is_called_as_today(pf_client, flow_copy, fake, connect) -> None:
    """A tutorial's endpoint, written before `api` existed: /score, contract body, no /v1 call."""
    from promptflow.client import PFClient
    from promptflow.entities import CustomConnection

    PFClient().connections.create_or_update(
        CustomConnection(name="phi_endpoint", configs={"endpoint": fake.url}, secrets={"key": KEY})
    )
    assert run_flow(pf_client, flow_copy, "Who founded Microsoft?") == {"answer": ANSWER}
    (request,) = fake.requests
    assert request.path == "/score"
    assert set(request.body) == {"messages", "max_tokens", "temperature", "top_p"}


def test_a_connection_with_an_unknown_api_says_what_to_do(pf_client, flow_copy, fake, pf_ready) -> None:
    from promptflow.client import PFClient
    from promptflow.entities import CustomConnection

    PFClient().connections.create_or_update(CustomConnection(
        name="phi_endpoint", configs={"endpoint": fake.base_url, "api": "openia"}, secrets={"key": KEY}
    ))
    message = flow_error(pf_client, flow_copy)
    assert "api='openia'" in message and "use openai" in message
    assert fake.requests == []


def test_flow_forwards_chat_history(pf_client, flow_copy, fake, connect) -> None:
    run_flow(pf_client, flow_copy, "And in one word?", HISTORY)
    assert fake.requests[0].body["messages"] == [
        {"role": "user", "content": "Hi, who are you?"},
        {"role": "assistant", "content": "A small Phi-3 model."},
        {"role": "user", "content": "What can you do?"},
        {"role": "assistant", "content": "Answer questions."},
        {"role": "user", "content": "And in one word?"},
    ]
    assert "azureml-model-deployment" not in {k.lower() for k in fake.requests[0].headers}


@pytest.mark.parametrize(
    ("reply", "needles"),
    [
        (Reply(401, {"error": "invalid key"}), ["HTTP 401", "key is wrong or was rotated", "python -m deployment.deploy"]),
        (Reply(403, "forbidden"), ["HTTP 403", "key is wrong or was rotated"]),
        (Reply(404, {"error": "not found"}), ["HTTP 404", "was not found", "deleted"]),
        (Reply(400, {"error": "max_tokens must be <= 2048"}), ["HTTP 400", "max_tokens must be <= 2048"]),
        (Reply(408, "request timed out"), ["HTTP 408", "unhealthy", "See its logs"]),
        (Reply(424, {"message": "model worker died"}), ["HTTP 424", "unhealthy", "model worker died", "See its logs"]),
        (Reply(500, "internal error"), ["HTTP 500", "unhealthy", "See its logs"]),
        (Reply(200, {"unexpected": True}), ["cannot read", "request_format"]),
    ],
    ids=["401", "403", "404", "400", "408", "424", "500", "malformed"],
)
def test_flow_errors_have_one_clear_message(pf_client, flow_copy, fake, connect, reply, needles) -> None:
    fake.queue(reply)
    message = flow_error(pf_client, flow_copy)
    assert "EndpointError" in message
    for needle in needles:
        assert needle in message
    assert len(fake.requests) == 1


@pytest.mark.slow
def test_flow_retries_503_a_bounded_number_of_times(pf_client, flow_copy, fake, connect) -> None:
    fake.default = Reply(503, "no healthy upstream")
    message = flow_error(pf_client, flow_copy)
    assert len(fake.requests) == 4  # 1 + max_retries (3)
    assert "HTTP 503 after 4 attempt(s)" in message
    gaps = [b.at - a.at for a, b in zip(fake.requests, fake.requests[1:])]
    assert gaps[0] >= 0.45 and gaps[2] >= 1.8  # exponential backoff: 0.5, 1, 2 s


@pytest.mark.slow
def test_flow_honours_retry_after_on_429(pf_client, flow_copy, fake, connect) -> None:
    fake.queue(Reply(429, "busy", headers={"Retry-After": "1"}), Reply(429, "busy", headers={"Retry-After": "1"}))
    assert run_flow(pf_client, flow_copy, "Who founded Microsoft?") == {"answer": ANSWER}
    assert len(fake.requests) == 3
    gaps = [b.at - a.at for a, b in zip(fake.requests, fake.requests[1:])]
    assert min(gaps) >= 0.95


def test_flow_retries_a_connection_reset(pf_client, flow_copy, fake, connect) -> None:
    fake.queue(Reply(reset=True))
    assert run_flow(pf_client, flow_copy, "Who founded Microsoft?") == {"answer": ANSWER}
    assert len(fake.requests) == 2


def test_flow_with_the_endpoint_down_says_so_after_bounded_retries(pf_client, flow_copy, pf_ready) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    from promptflow.client import PFClient
    from promptflow.entities import CustomConnection

    PFClient().connections.create_or_update(CustomConnection(
        name="phi_endpoint", configs={"endpoint": f"http://127.0.0.1:{port}/score", "max_retries": "1", "backoff": "0.1"},
        secrets={"key": KEY},
    ))
    message = flow_error(pf_client, flow_copy)
    assert "could not reach the endpoint" in message and "after 2 attempt(s)" in message
    assert "Connection refused" in message


@pytest.mark.parametrize("question", ["", "   "])
def test_flow_refuses_an_empty_question(pf_client, flow_copy, fake, connect, question) -> None:
    message = flow_error(pf_client, flow_copy, question=question)
    assert "question is empty" in message
    assert fake.requests == []


def test_flow_without_connection_endpoint_config_says_what_to_do(pf_client, flow_copy, fake, pf_ready) -> None:
    from promptflow.client import PFClient
    from promptflow.entities import CustomConnection

    PFClient().connections.create_or_update(
        CustomConnection(name="phi_endpoint", configs={"request_format": "contract"}, secrets={"key": KEY})
    )
    message = flow_error(pf_client, flow_copy)
    assert "no `endpoint` config" in message and "python -m deployment.deploy" in message


def pf_cli() -> str:
    return str(Path(sys.executable).with_name("pf"))


@pytest.mark.slow
def test_pf_flow_test_cli_answers_and_reports_errors(flow_copy, fake, connect, tmp_path) -> None:
    """The README's command, as a subprocess: the answer on stdout; a 401 as one clear failure."""
    env = dict(os.environ)
    done = subprocess.run(
        [pf_cli(), "flow", "test", "--flow", str(flow_copy), "--inputs", "question=Who founded Microsoft?"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert ANSWER in done.stdout
    assert KEY not in done.stdout + done.stderr
    assert fake.requests[0].body["messages"] == [{"role": "user", "content": "Who founded Microsoft?"}]

    fake.queue(Reply(401, {"error": "invalid key"}))
    failed = subprocess.run(
        [pf_cli(), "flow", "test", "--flow", str(flow_copy), "--inputs", "question=Who founded Microsoft?"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "key is wrong or was rotated" in output
    assert KEY not in output


def test_key_is_in_no_run_file_and_not_in_plain_text_in_the_store(pf_client, flow_copy, fake, connect, pf_ready) -> None:
    """Flow runs write .promptflow/ run folders (inputs, outputs, logs) in the flow copy: none holds the key."""
    fake.queue(Reply(401, {"error": "invalid key"}))
    flow_error(pf_client, flow_copy)
    run_flow(pf_client, flow_copy, "Who founded Microsoft?", HISTORY)
    run_dir = flow_copy / ".promptflow"
    assert run_dir.is_dir() and any(p.is_file() for p in run_dir.rglob("*"))
    assert files_containing(flow_copy, KEY) == []
    # Prompt flow's own store (PF_HOME_DIRECTORY) holds it encrypted only
    assert files_containing(pf_ready, KEY) == []
