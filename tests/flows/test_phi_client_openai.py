"""PhiClient with `api="openai"`: POST {base}/v1/chat/completions, read choices[0].message.content.

Against the fake endpoint on 127.0.0.1, whose /v1/chat/completions answers in the OpenAI API's real
shape: the first test proves that shape with the official `openai` client, so what PhiClient reads
here is what the API sends. Errors and retries behave as for /score (test_phi_client.py).
"""
from __future__ import annotations

import pytest

from flows.chat.phi_client import EndpointError, PhiClient, history_to_messages, openai_url, parse_openai_reply

from fake_endpoint import ANSWER, KEY, MODEL, OPENAI_PATH, Reply, openai_completion, openai_error

PF_HISTORY = [{"inputs": {"question": "Hi"}, "outputs": {"answer": "Hello! How can I help?"}}]


def make_client(fake, sleeps=None, **kwargs) -> PhiClient:
    sleeps = [] if sleeps is None else sleeps
    return PhiClient(fake.base_url, KEY, api="openai", sleep=sleeps.append, **kwargs)


def test_the_fake_speaks_the_real_openai_api(fake) -> None:
    """The official client, pointed at the fake's /v1, parses its answer into its own types."""
    from openai import OpenAI

    client = OpenAI(base_url=fake.base_url + "/v1", api_key=KEY, max_retries=0)
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Who founded Microsoft?"}], max_tokens=16
    )
    assert completion.choices[0].message.content == ANSWER
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    (request,) = fake.requests
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert request.path == OPENAI_PATH and headers["authorization"] == f"Bearer {KEY}"


def test_chat_posts_the_openai_body_and_reads_the_completion(fake) -> None:
    fake.queue(Reply(body=openai_completion("Paris.", "length", prompt_tokens=20, completion_tokens=4)))
    reply = make_client(fake, deployment="blue").chat("And France?", PF_HISTORY, max_tokens=4, temperature=0.2)
    assert (reply.text, reply.finish_reason) == ("Paris.", "length")
    assert reply.usage["prompt_tokens"] == 20 and reply.usage["completion_tokens"] == 4
    assert reply.raw["object"] == "chat.completion"
    (request,) = fake.requests
    assert request.path == OPENAI_PATH
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["azureml-model-deployment"] == "blue"
    assert request.body == {
        "messages": history_to_messages(PF_HISTORY) + [{"role": "user", "content": "And France?"}],
        "max_tokens": 4,
        "temperature": 0.2,
        "top_p": 0.9,
    }


def test_no_deployment_header_unless_configured(fake) -> None:
    assert make_client(fake).chat("hi").text == ANSWER
    assert "azureml-model-deployment" not in {k.lower() for k in fake.requests[0].headers}


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://127.0.0.1:5001", "http://127.0.0.1:5001/v1/chat/completions"),
        ("http://127.0.0.1:5001/", "http://127.0.0.1:5001/v1/chat/completions"),
        ("http://127.0.0.1:5001/v1", "http://127.0.0.1:5001/v1/chat/completions"),  # an OpenAI-style base_url
        ("https://phi.eastus.inference.ml.azure.com", "https://phi.eastus.inference.ml.azure.com/v1/chat/completions"),
    ],
)
def test_base_url_forms(endpoint, url) -> None:
    assert openai_url(endpoint) == url
    assert PhiClient(endpoint, KEY, api="openai").url == url


def test_a_base_ending_in_score_is_where_the_routes_hang_off(fake) -> None:
    """An Azure ML endpoint that forwards paths only after its scoring route: `endpoint` is `https://HOST/score`."""
    assert PhiClient("https://phi.eastus.inference.ml.azure.com/score", KEY, api="openai").url == (
        "https://phi.eastus.inference.ml.azure.com/score/v1/chat/completions")
    fake.queue(Reply(body=openai_completion()))
    assert PhiClient(fake.url, KEY, api="openai").chat("hi").text == ANSWER
    assert [r.path for r in fake.requests] == ["/score" + OPENAI_PATH]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"api": "anthropic"}, "api must be one of openai"), ({"api": "openai", "request_format": "registry"}, "applies to /score")],
)
def test_bad_api_settings_are_refused(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        PhiClient("http://127.0.0.1:5001", KEY, **kwargs)


def test_without_api_the_client_still_posts_to_the_scoring_url(fake) -> None:
    client = PhiClient(fake.url, KEY)
    assert client.url == fake.url and client.chat("hi").text == ANSWER
    assert fake.requests[0].path == "/score"
    assert "request_format='contract'" in repr(client) and "api=" not in repr(client)


@pytest.mark.parametrize(
    ("status", "body", "needles"),
    [
        (400, openai_error("max_tokens must be at least 1, got -1"), ["HTTP 400", "max_tokens must be at least 1, got -1"]),
        (401, openai_error("Incorrect API key", "invalid_api_key"), ["HTTP 401", "key is wrong or was rotated"]),
        (404, {"detail": "Not Found"}, ["HTTP 404", "api=openai", "remove `api`"]),
        (500, openai_error("engine crashed", type_="server_error"), ["HTTP 500", "unhealthy", "engine crashed"]),
    ],
)
def test_errors_have_one_clear_message(fake, status, body, needles) -> None:
    fake.queue(Reply(status=status, body=body))
    with pytest.raises(EndpointError) as info:
        make_client(fake).chat("hi")
    assert info.value.status == status
    for needle in needles:
        assert needle in str(info.value)
    assert KEY not in str(info.value) and len(fake.requests) == 1


def test_503_and_resets_are_retried_as_for_score(fake) -> None:
    fake.queue(Reply(503, openai_error("busy")), Reply(reset=True))
    sleeps: list[float] = []
    assert make_client(fake, sleeps, max_retries=3, backoff=0.5).chat("hi").text == ANSWER
    assert len(fake.requests) == 3 and len(sleeps) == 2
    assert {r.path for r in fake.requests} == {OPENAI_PATH}


def test_429_honours_retry_after(fake) -> None:
    fake.queue(Reply(429, openai_error("slow down"), headers={"Retry-After": "2"}))
    sleeps: list[float] = []
    assert make_client(fake, sleeps).chat("hi").text == ANSWER
    assert sleeps == [2.0]


@pytest.mark.parametrize(
    "body",
    [{"output": ANSWER}, [ANSWER], openai_completion(content=None), {"choices": []}],
    ids=["score-dialect", "mlflow-list", "null-content", "no-choices"],
)
def test_a_reply_that_is_not_a_chat_completion_says_what_to_check(fake, body) -> None:
    fake.queue(Reply(body=body))
    with pytest.raises(EndpointError, match="cannot read") as info:
        make_client(fake).chat("hi")
    assert "choices[0].message.content" in str(info.value) and "remove `api`" in str(info.value)


def test_a_tutorial_endpoint_reached_as_openai_fails_clearly_on_the_fakes_404(fake) -> None:
    """The fake, unscripted, has no route but /score and /v1/chat/completions: a /score-only server 404s."""
    client = PhiClient(fake.base_url + "/v1", KEY, api="openai")
    assert client.chat("hi").text == ANSWER  # the route exists on this server
    fake.queue(Reply(404, {"detail": "Not Found"}))
    with pytest.raises(EndpointError, match="remove `api` from the connection"):
        client.chat("hi")


def test_parse_openai_reply_is_strict() -> None:
    assert parse_openai_reply(openai_completion()).text == ANSWER
    assert parse_openai_reply({"output": ANSWER}) is None
    assert parse_openai_reply([openai_completion()]) is None
