"""`python -m deployment.serve`, the real server on the tiny model, driven by the clients people use.

The official `openai` client (non-streamed, streamed, 4xx), the tutorials' exact client code paths
against /score, the routes that must not exist, requests decoded together, the registry pipeline's
hftransformers layout, and the command line. One server per module (startup is the slow part).
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import requests

from serving.helpers import build_hftransformers_tree, free_port, post, start_server, stop

pytestmark = pytest.mark.slow

QUESTION = "Who founded Microsoft?"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": QUESTION},
]


@pytest.fixture(scope="module")
def client(inference_server: str):
    from openai import OpenAI

    return OpenAI(base_url=inference_server + "/v1", api_key="not-checked-locally", max_retries=0, timeout=60)


# -- the OpenAI API ----------------------------------------------------------------------------------


def test_openai_client_gets_a_reply_with_finish_reason_and_usage(client) -> None:
    reply = client.chat.completions.create(model="phi", messages=MESSAGES, max_tokens=6)
    choice = reply.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens > 5 and 1 <= usage.completion_tokens <= 6
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 6


def test_openai_client_streams_in_several_chunks(client) -> None:
    stream = client.chat.completions.create(model="phi", messages=MESSAGES, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(content) >= 2, chunks
    assert finishes in (["length"], ["stop"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 12
    # The streamed text is the non-streamed reply, piece by piece (greedy is deterministic).
    whole = client.chat.completions.create(model="phi", messages=MESSAGES, max_tokens=12, temperature=0)
    assert "".join(content).strip() == whole.choices[0].message.content


def test_sse_ends_with_done(inference_server: str) -> None:
    body = {"messages": MESSAGES, "max_tokens": 3, "stream": True}
    with requests.post(inference_server + "/v1/chat/completions", json=body, stream=True, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert events[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in events)
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"max_tokens": -1}, "max_tokens must be between 1 and"),
        ({"max_completion_tokens": 10**6}, "max_completion_tokens must be between 1 and"),
        ({"messages": [{"role": "user", "content": "word " * 5000}]}, "context cap"),
        ({"temperature": 5}, "temperature"),
        ({"n": 3}, "n must be 1"),
    ],
    ids=["max-tokens-negative", "max-completion-tokens-over-cap", "prompt-too-long", "temperature", "n"],
)
def test_openai_client_gets_4xx_for_bad_requests(client, extra: dict, message: str) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        params = {"model": "phi", "messages": MESSAGES, **extra}
        if "max_completion_tokens" not in params:
            params.setdefault("max_tokens", 4)
        client.chat.completions.create(**params)
    assert info.value.status_code == 400
    assert message in info.value.body["message"]


def test_models_lists_the_one_served_model(client, inference_server: str) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["finetune-phi"]  # the registered folder's name (AZUREML_MODEL_DIR/<name>/<version>)
    status = requests.get(inference_server + "/v1/models", timeout=10).status_code
    assert status == 200


def test_health_reports_the_limits(inference_server: str) -> None:
    health = requests.get(inference_server + "/health", timeout=10).json()
    assert health["status"] == "ok"
    limits = health["limits"]
    assert limits["max_tokens"] < limits["context_tokens"] and limits["max_sequences"] >= 2
    assert requests.get(inference_server + "/live", timeout=10).status_code == 200


@pytest.mark.parametrize("method, path", [("POST", "/load_model"), ("POST", "/reset"), ("GET", "/docs"),
                                          ("GET", "/openapi.json"), ("GET", "/v1/responses")])
def test_management_routes_do_not_exist(inference_server: str, method: str, path: str) -> None:
    response = requests.request(method, inference_server + path, json={"model": "x"}, timeout=10)
    assert response.status_code == 404
    assert "error" in response.json()


def test_stop_sequence_cuts_the_reply(client) -> None:
    whole = client.chat.completions.create(model="phi", messages=MESSAGES, max_tokens=16, temperature=0)
    text = whole.choices[0].message.content
    stop_at = next(i for i in range(3, len(text) - 1) if text[i:i + 2].strip() and text[i:i + 2] not in text[:i])
    cut = client.chat.completions.create(model="phi", messages=MESSAGES, max_tokens=16, temperature=0,
                                         stop=[text[stop_at:stop_at + 2]])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[:stop_at].strip()


# -- /score: the tutorials' clients, unchanged ----------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/score"])
def test_the_scoring_uri_answers_at_the_root_and_at_score(inference_server: str, path: str) -> None:
    """Azure ML may publish the container's scoring route (`/`) as the scoring URI: both paths score."""
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4, "temperature": 0}
    response = requests.post(inference_server + path, json=body, timeout=60)
    assert response.status_code == 200 and isinstance(response.json()["output"], str)
    assert response.json()["usage"]["completion_tokens"] <= 4


def test_first_tutorial_client_reads_element_zero(inference_server: str) -> None:
    """The first tutorial's Prompt flow tool: {"input_data": [question], "params": {...}}; reads response.json()[0]."""
    data = {"input_data": [QUESTION], "params": {"temperature": 0.7, "max_new_tokens": 8, "do_sample": True,
                                                 "return_full_text": False}}
    body = str.encode(json.dumps(data))
    headers = {"Content-Type": "application/json", "Authorization": "Bearer key", "azureml-model-deployment": "blue"}
    response = requests.post(inference_server + "/score", data=body, headers=headers, timeout=60)
    result = response.json()[0]
    assert isinstance(result, str) and response.status_code == 200


def test_foundry_tutorial_client_reads_output(inference_server: str) -> None:
    """The AI Foundry tutorial's client: {"messages": [...], ...}; reads response.json()["output"]."""
    response = requests.post(inference_server + "/score", json={"messages": MESSAGES, "max_tokens": 8,
                                                               "temperature": 0.7, "top_p": 0.9}, timeout=60)
    output = response.json()["output"]
    assert isinstance(output, str)
    assert response.json()["finish_reason"] in ("stop", "length")


def test_registry_tutorial_sample_score_json(inference_server: str, tmp_path: Path) -> None:
    """The registry tutorial's sample_score.json: one conversation wrapped in a list, "params": {} beside."""
    sample = tmp_path / "sample_score.json"
    sample.write_text(json.dumps({
        "input_data": {
            "input_string": [MESSAGES],
            "parameters": {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 8},
        },
        "params": {},
    }))
    with open(sample) as handle:
        response = requests.post(inference_server + "/score", data=handle.read(),
                                 headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert isinstance(answer["output"], str) and 1 <= answer["usage"]["completion_tokens"] <= 8


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "not valid JSON"),
        ({"messages": []}, "empty"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role"),
        ({"messages": MESSAGES, "max_tokens": 10**6}, "max_tokens"),
        ({"messages": MESSAGES, "max_tokens": -1}, "max_tokens"),
        ({"input_data": {"input_string": MESSAGES, "parameters": {"top_p": 0}}}, "top_p"),
        ({"messages": [{"role": "user", "content": "word " * 5000}]}, "context cap"),
        ({"input_data": [[MESSAGES[1]], [MESSAGES[1]]]}, "2 conversations"),
    ],
    ids=["bad-json", "empty", "role", "max-tokens-cap", "max-tokens-negative", "top-p", "too-long", "two-chats"],
)
def test_bad_score_requests_are_400_with_a_message(inference_server: str, body, message: str) -> None:
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


# -- the registry pipeline's hftransformers layout ----------------------------------------------------


def test_serves_the_registry_pipelines_hftransformers_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    """AZUREML_MODEL_DIR/<name>/<version>/ holding the pipeline's `trained_model` tree, served as is."""
    root = tmp_path / "azureml-models" / "phi3-registry" / "1"
    tree = build_hftransformers_tree(tiny_model_dir, root / "mlflow_model_folder")
    assert sorted(p.name for p in tree.iterdir()) == ["MLmodel", "code", "conda.yaml", "data"]
    process, base = start_server(root, tmp_path / "server.log")
    try:
        status, answer = post(base + "/score", {"input_data": {"input_string": MESSAGES, "parameters": {"max_new_tokens": 4}}})
        assert status == 200 and answer["usage"]["completion_tokens"] <= 4
        from openai import OpenAI

        reply = OpenAI(base_url=base + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model="phi", messages=MESSAGES, max_tokens=4)
        assert reply.choices[0].finish_reason in ("stop", "length")
    finally:
        stop(process)
    log = (tmp_path / "server.log").read_text()
    assert "hftransformers model" in log and "mlflow_model_folder/data/model" in log
    assert "trust_remote_code" in log and "not needed" in log  # MLmodel asked; built-in Phi3 needs none


# -- the command line ------------------------------------------------------------------------------


def _serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deployment.serve", *args], capture_output=True, text=True, timeout=timeout)


def test_help_is_instant_and_imports_nothing_heavy() -> None:
    result = _serve("--help")
    assert result.returncode == 0 and "--model-dir" in result.stdout and "--host" in result.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, deployment.serve as s; s.build_parser();"
         "print(sorted(m for m in ('torch', 'transformers', 'fastapi', 'uvicorn') if m in sys.modules))"],
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


def test_a_model_that_fails_to_load_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "phi3"}')  # a config, but no tokenizer or weights
    port = free_port()
    result = _serve("--model-dir", str(tmp_path), "--port", str(port), timeout=120)
    assert result.returncode == 1
    assert "the model failed to load" in result.stderr
    with pytest.raises(OSError):  # and nothing is left listening
        urllib.request.urlopen(f"http://127.0.0.1:{port}/live", timeout=2)
