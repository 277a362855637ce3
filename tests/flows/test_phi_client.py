"""The endpoint client alone: messages, trimming, request and response shapes, errors, retries.

HTTP goes to the fake endpoint on 127.0.0.1 (tests/flows/conftest.py); no promptflow here, so
these run in about a second.
"""
from __future__ import annotations

import pytest

from flows.chat.phi_client import (
    ChatReply,
    EndpointError,
    PhiClient,
    build_messages,
    build_payload,
    history_to_messages,
    parse_reply,
)

from fake_endpoint import ANSWER, KEY, Reply

PF_HISTORY = [
    {"inputs": {"question": "Hi"}, "outputs": {"answer": "Hello! How can I help?"}},
    {"inputs": {"question": "What is Azure ML?"}, "outputs": {"answer": "A cloud ML platform."}},
]


def make_client(fake, sleeps=None, **kwargs) -> PhiClient:
    sleeps = [] if sleeps is None else sleeps
    kwargs.setdefault("backoff", 0.5)
    return PhiClient(fake.url, KEY, sleep=sleeps.append, **kwargs)


# -- messages and trimming ------------------------------------------------------------------------


def test_prompt_flow_history_becomes_alternating_messages() -> None:
    assert history_to_messages(PF_HISTORY) == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "What is Azure ML?"},
        {"role": "assistant", "content": "A cloud ML platform."},
    ]


def test_history_may_already_be_messages() -> None:
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert build_messages("c", messages)[-3:] == messages + [{"role": "user", "content": "c"}]


def test_bad_history_item_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"chat_history\[1\] must look like"):
        history_to_messages([PF_HISTORY[0], {"question": "x"}])


def test_trimming_drops_oldest_turns_whole_and_keeps_system_and_question() -> None:
    history = [{"inputs": {"question": f"q{i}" * 10}, "outputs": {"answer": f"a{i}" * 10}} for i in range(10)]
    question = "the question " * 5
    messages = build_messages(question, history, system_prompt="be brief", budget_chars=200)
    assert messages[0] == {"role": "system", "content": "be brief"}
    assert messages[-1] == {"role": "user", "content": question}
    total = sum(len(m["content"]) for m in messages)
    assert total <= 200
    body = messages[1:-1]
    # the newest turns survive, in order, as complete user/assistant pairs
    assert [m["role"] for m in body] == ["user", "assistant"] * (len(body) // 2)
    assert body[-1]["content"] == "a9" * 10
    assert len(body) // 2 == (200 - len("be brief") - len(question)) // 40  # 40 characters a turn


def test_question_and_system_are_kept_even_over_budget() -> None:
    messages = build_messages("x" * 50, PF_HISTORY, system_prompt="s", budget_chars=10)
    assert messages == [{"role": "system", "content": "s"}, {"role": "user", "content": "x" * 50}]


def test_system_message_from_history_is_kept() -> None:
    history = [{"role": "system", "content": "sys"}] + history_to_messages(PF_HISTORY)
    messages = build_messages("q", history, budget_chars=10)
    assert messages == [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}]


@pytest.mark.parametrize("question", ["", "   ", None])
def test_empty_question_is_refused(question) -> None:
    with pytest.raises(ValueError, match="question is empty"):
        build_messages(question, [])


# -- request shapes -------------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]
PARAMS = {"max_tokens": 64, "temperature": 0.0, "top_p": 0.9}


def test_request_shapes_match_the_scoring_contract() -> None:
    assert build_payload(MESSAGES, "contract", PARAMS) == {
        "messages": MESSAGES, "max_tokens": 64, "temperature": 0.0, "top_p": 0.9,
    }
    generation = {"max_new_tokens": 64, "temperature": 0.0, "top_p": 0.9, "do_sample": False}
    assert build_payload(MESSAGES, "registry", PARAMS) == {
        "input_data": {"input_string": MESSAGES, "parameters": generation}
    }
    assert build_payload(MESSAGES, "mlflow", PARAMS) == {"input_data": MESSAGES, "params": generation}
    with pytest.raises(ValueError, match="request_format must be one of"):
        build_payload(MESSAGES, "openai", PARAMS)


# -- response shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "text", "finish"),
    [
        ({"output": "hi", "finish_reason": "length", "usage": {"prompt_tokens": 3}}, "hi", "length"),
        (["hi"], "hi", None),
        ([{"0": "hi"}], "hi", None),
        ("hi", "hi", None),
        ('{"output": "hi", "finish_reason": "stop"}', "hi", "stop"),  # json.dumps returned by run()
        ([{"generated_text": "hi"}], "hi", None),
        ({"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}, "hi", "stop"),
    ],
)
def test_every_response_shape_is_read(body, text, finish) -> None:
    reply = parse_reply(body)
    assert isinstance(reply, ChatReply)
    assert (reply.text, reply.finish_reason) == (text, finish)
    assert reply.raw == body


@pytest.mark.parametrize("body", [{}, [], {"result": 1}, [1], {"output": 5}, None, 3])
def test_unknown_shapes_are_not_guessed(body) -> None:
    assert parse_reply(body) is None


# -- HTTP against the fake endpoint ---------------------------------------------------------------


def test_chat_sends_bearer_key_deployment_header_and_history(fake) -> None:
    client = make_client(fake, deployment="blue")
    reply = client.chat("Who founded Microsoft?", PF_HISTORY, max_tokens=32)
    assert reply.text == ANSWER and reply.finish_reason == "stop"
    (request,) = fake.requests
    assert request.path == "/score"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["azureml-model-deployment"] == "blue"
    assert request.body["messages"][-1] == {"role": "user", "content": "Who founded Microsoft?"}
    assert request.body["messages"][:-1] == history_to_messages(PF_HISTORY)
    assert request.body["max_tokens"] == 32 and request.body["temperature"] == 0.7


def test_no_deployment_header_unless_configured(fake) -> None:
    make_client(fake).chat("hi")
    assert "azureml-model-deployment" not in {k.lower() for k in fake.requests[0].headers}


@pytest.mark.parametrize("request_format", ["registry", "mlflow"])
def test_other_request_formats_on_the_wire(fake, request_format) -> None:
    fake.queue(Reply(body=[{"0": "from mlflow"}]))
    reply = make_client(fake, request_format=request_format).chat("hi", max_new_tokens=16, temperature=0)
    assert reply.text == "from mlflow"
    body = fake.requests[0].body
    parameters = body["input_data"]["parameters"] if request_format == "registry" else body["params"]
    assert parameters == {"max_new_tokens": 16, "temperature": 0.0, "top_p": 0.9, "do_sample": False}


def test_unknown_chat_parameter_is_refused(fake) -> None:
    with pytest.raises(TypeError, match="unknown chat parameter"):
        make_client(fake).chat("hi", temprature=0.1)
    assert fake.requests == []


@pytest.mark.parametrize(
    ("status", "body", "needles"),
    [
        (401, {"error": "unauthorized"}, ["HTTP 401", "key is wrong or was rotated", "python -m deployment.deploy"]),
        (403, "forbidden", ["HTTP 403", "key is wrong or was rotated"]),
        (404, {"error": "no such endpoint"}, ["HTTP 404", "not found", "deleted"]),
        (400, {"error": "max_tokens must be between 1 and 2048"}, ["HTTP 400", "max_tokens must be between 1 and 2048"]),
        (408, "timeout", ["HTTP 408", "unhealthy", "See its logs"]),
        (424, {"message": "model crashed"}, ["HTTP 424", "unhealthy", "model crashed", "See its logs"]),
        (500, "boom", ["HTTP 500", "unhealthy", "boom"]),
    ],
)
def test_each_error_status_has_one_clear_message(fake, status, body, needles) -> None:
    fake.queue(Reply(status=status, body=body))
    client = make_client(fake)
    with pytest.raises(EndpointError) as info:
        client.chat("hi")
    assert info.value.status == status
    for needle in needles:
        assert needle in str(info.value)
    assert KEY not in str(info.value)
    assert len(fake.requests) == 1  # not retried


def test_azure_endpoint_errors_name_the_logs_command() -> None:
    client = PhiClient("https://phi-ft.eastus.inference.ml.azure.com/score", KEY, deployment="green")
    message = client._error_message(424, '{"message": "crash"}')
    assert "az ml online-deployment get-logs --endpoint-name phi-ft --name green" in message
    assert "studio" in message


def test_503_is_retried_a_bounded_number_of_times_with_backoff(fake) -> None:
    fake.default = Reply(status=503, body="upstream busy")
    sleeps: list[float] = []
    client = make_client(fake, sleeps, max_retries=2, backoff=0.5)
    with pytest.raises(EndpointError) as info:
        client.chat("hi")
    assert len(fake.requests) == 3
    assert info.value.status == 503
    assert "after 3 attempt(s)" in str(info.value) and "unhealthy" in str(info.value)
    assert len(sleeps) == 2 and 0.5 <= sleeps[0] <= 0.56 and 1.0 <= sleeps[1] <= 1.11


def test_429_honours_retry_after_capped_then_succeeds(fake) -> None:
    fake.queue(
        Reply(status=429, body="slow down", headers={"Retry-After": "7"}),
        Reply(status=429, body="slow down", headers={"Retry-After": "3600"}),
    )
    sleeps: list[float] = []
    client = make_client(fake, sleeps, max_retries=3, max_retry_after=20)
    assert client.chat("hi").text == ANSWER
    assert len(fake.requests) == 3
    assert sleeps == [7.0, 20.0]


def test_429_exhausted_says_rate_limited(fake) -> None:
    fake.default = Reply(status=429, body="slow down", headers={"Retry-After": "0"})
    with pytest.raises(EndpointError, match="rate limiting") as info:
        make_client(fake, max_retries=1).chat("hi")
    assert info.value.status == 429 and len(fake.requests) == 2


def test_connection_reset_is_retried(fake) -> None:
    fake.queue(Reply(reset=True), Reply(reset=True))
    sleeps: list[float] = []
    assert make_client(fake, sleeps, max_retries=3).chat("hi").text == ANSWER
    assert len(fake.requests) == 3 and len(sleeps) == 2


def test_connection_reset_exhausted_is_a_clear_error(fake) -> None:
    fake.default = Reply(reset=True)
    with pytest.raises(EndpointError, match="could not reach the endpoint .* after 2 attempt") as info:
        make_client(fake, max_retries=1).chat("hi")
    assert info.value.status is None and len(fake.requests) == 2
    assert KEY not in str(info.value)


def test_read_timeout_is_not_retried(fake) -> None:
    fake.queue(Reply(delay=1.0))
    with pytest.raises(EndpointError, match="no answer within 0.3 s") as info:
        make_client(fake, timeout=0.3).chat("hi")
    assert info.value.status is None and len(fake.requests) == 1


@pytest.mark.parametrize(
    ("body", "raw"),
    [({"result": "?"}, False), ("{not json", True), ("", True), ([], False)],
)
def test_malformed_response_is_a_clear_error(fake, body, raw) -> None:
    fake.queue(Reply(body=body, raw=raw))
    with pytest.raises(EndpointError, match="cannot read") as info:
        make_client(fake).chat("hi")
    assert info.value.status == 200
    assert "request_format" in str(info.value)


def test_plain_text_body_is_an_answer(fake) -> None:
    fake.queue(Reply(body="just text", raw=True))
    assert make_client(fake).chat("hi").text == "just text"


def test_key_never_in_repr_or_messages_even_when_echoed(fake) -> None:
    client = make_client(fake, deployment="blue")
    assert KEY not in repr(client) and KEY not in str(client)
    assert "<hidden>" in repr(client)
    # a misbehaving endpoint that echoes the Authorization header back in its error
    fake.queue(Reply(status=400, body={"error": f"bad header Bearer {KEY}"}))
    with pytest.raises(EndpointError) as info:
        client.chat("hi")
    assert KEY not in str(info.value) and KEY not in repr(info.value)


def test_constructor_validation_does_not_echo_the_key() -> None:
    with pytest.raises(ValueError, match="key is empty"):
        PhiClient("http://127.0.0.1:1/score", "")
    with pytest.raises(ValueError, match="http"):
        PhiClient("127.0.0.1/score", KEY)
    with pytest.raises(ValueError, match="request_format") as info:
        PhiClient("http://127.0.0.1:1/score", KEY, request_format="nope")
    assert KEY not in str(info.value)


@pytest.mark.parametrize("request_format", ["contract", "registry", "mlflow"])
def test_every_request_format_is_accepted_by_the_projects_scoring_script(request_format) -> None:
    """The client's payloads and deployment/dialects.py parser agree (docs/ARCHITECTURE.md section 5)."""
    from deployment.serving.dialects import parse_request

    messages = build_messages("And now?", PF_HISTORY, system_prompt="Be brief.")
    parsed = parse_request(build_payload(messages, request_format, PARAMS | {"temperature": 0.5}))
    assert parsed.messages == messages
    assert (parsed.max_tokens, parsed.temperature, parsed.top_p) == (64, 0.5, 0.9)
