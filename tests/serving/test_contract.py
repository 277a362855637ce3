"""The serving contract (docs/ARCHITECTURE.md section 5), held by every engine: one suite, each engine's server.

The official `openai` client (plain reply with usage and finish_reason, streamed chunks, 4xx for bad
requests and an over-long prompt), the tutorials' three `/score` clients as they are written, and the
routes that must not exist (ours and vLLM's own). Engines: transformers in .venv (5.23), vLLM's CPU
build, and the transformers engine in vLLM's environment (transformers<5.20): the package runs on both.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from serving.helpers import post

pytestmark = pytest.mark.slow

QUESTION = "Who founded Microsoft?"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": QUESTION},
]
ENGINES = ["transformers", pytest.param("vllm", marks=pytest.mark.vllm),
           pytest.param("transformers_519", marks=pytest.mark.vllm)]


@pytest.fixture(scope="module", params=ENGINES)
def inference_server(request: pytest.FixtureRequest) -> str:
    """The base URL of one engine's session-wide server (tests/serving/conftest.py)."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture(scope="module")
def client(inference_server: str):
    from openai import OpenAI

    return OpenAI(base_url=inference_server + "/v1", api_key="not-checked-locally", max_retries=0, timeout=120)


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


@pytest.mark.parametrize("method, path", [
    ("POST", "/load_model"), ("POST", "/reset"), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/v1/responses"),
    # vLLM's own app has these; ours, in front of vLLM's engine, does not
    ("POST", "/v1/completions"), ("POST", "/tokenize"), ("POST", "/detokenize"), ("GET", "/metrics"),
    ("POST", "/v1/load_lora_adapter"), ("POST", "/v1/unload_lora_adapter"), ("GET", "/version"), ("GET", "/ping"),
    ("POST", "/v1/embeddings"), ("POST", "/pooling"), ("POST", "/sleep"), ("POST", "/reset_prefix_cache"),
])
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


def test_a_streaming_client_that_leaves_frees_the_engine(inference_server: str) -> None:
    """The engine drops a stream whose client hung up: /health shows nothing in flight within 5 s, where
    the 2,000-token reply would take 10 s or more to finish on its own (about 190 tokens/s at best here)."""
    import time

    body = {"messages": MESSAGES, "max_tokens": 2000, "temperature": 0, "stream": True}
    with requests.post(inference_server + "/v1/chat/completions", json=body, stream=True, timeout=60) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith(b"data: {"))  # generation has started
    deadline = time.monotonic() + 5
    while (health := requests.get(inference_server + "/health", timeout=10).json())["in_flight"] and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    assert health["in_flight"] == 0
