"""deployment/dialects.py: every request body a client sends, parsed or refused with one message."""
from __future__ import annotations

import json

import pytest

from deployment.serving.dialects import (
    DEFAULT_MAX_TOKENS,
    RequestError,
    parse_chat_completion,
    parse_request,
    score_reply,
)

USER = [{"role": "user", "content": "What is the capital of France?"}]
CAP = 2047


def test_three_score_dialects_parse_to_the_same_chat() -> None:
    contract = parse_request(json.dumps({"messages": USER, "max_tokens": 7, "temperature": 0.5, "top_p": 0.9}))
    registry = parse_request(
        {"input_data": {"input_string": USER, "parameters": {"max_new_tokens": 7, "temperature": 0.5, "top_p": 0.9}}}
    )
    mlflow = parse_request({"input_data": USER, "params": {"max_new_tokens": 7, "temperature": 0.5, "top_p": 0.9}})
    assert [r.shape for r in (contract, registry, mlflow)] == ["contract", "registry", "mlflow"]
    for request in (contract, registry, mlflow):
        assert (request.messages, request.max_tokens, request.temperature, request.top_p) == (USER, 7, 0.5, 0.9)
    text = parse_request({"input_data": ["Hello"], "params": {"do_sample": False, "temperature": 0.9}})
    assert text.messages == [{"role": "user", "content": "Hello"}]
    assert text.temperature == 0.0  # do_sample=false means greedy
    assert text.max_tokens == DEFAULT_MAX_TOKENS
    assert parse_request({"input_data": [USER]}).messages == USER
    parts = parse_request({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})
    assert parts.messages[0]["content"] == "ab"


def test_registry_sample_score_json_is_one_conversation() -> None:
    """A list holding one conversation is that conversation; "params": {} beside input_data is fine."""
    body = {"input_data": {"input_string": [USER], "parameters": {"max_new_tokens": 9}}, "params": {}}
    request = parse_request(body)
    assert (request.shape, request.messages, request.max_tokens) == ("registry", USER, 9)
    # parameters beside input_data count too; those inside input_data win
    merged = parse_request({"input_data": {"input_string": USER, "parameters": {"max_new_tokens": 9}},
                            "params": {"max_new_tokens": 9, "temperature": 0.3}})
    assert (merged.max_tokens, merged.temperature) == (9, 0.3)


def test_replies_in_each_dialects_shape() -> None:
    for shape_body in ({"messages": USER}, {"input_data": {"input_string": USER}}):
        reply = score_reply(parse_request(shape_body), "Paris.", "stop", 12, 3)
        assert reply == {"output": "Paris.", "finish_reason": "stop", "usage": {"prompt_tokens": 12, "completion_tokens": 3}}
    assert score_reply(parse_request({"input_data": ["Capital of France?"]}), "Paris.", "stop", 9, 3) == ["Paris."]


def test_openai_request() -> None:
    request = parse_chat_completion(
        {"model": "anything", "messages": [{"role": "developer", "content": "Be brief."}] + USER,
         "max_completion_tokens": 30, "temperature": 0.2, "top_p": 0.8, "stop": "\n\n", "stream": True,
         "stream_options": {"include_usage": True}, "n": 1, "user": "u1"}, CAP)
    assert request.messages[0] == {"role": "system", "content": "Be brief."}
    assert (request.max_tokens, request.temperature, request.top_p, request.stop) == (30, 0.2, 0.8, ("\n\n",))
    assert request.stream and request.include_usage and request.shape == "openai"
    default = parse_chat_completion({"messages": USER}, 100)
    assert (default.max_tokens, default.temperature, default.stream) == (100, 0.0, False)  # default, capped


OPENAI_BAD = {
    "max-tokens-negative": ({"messages": USER, "max_tokens": -1}, "between 1 and 2047"),
    "max-tokens-over-cap": ({"messages": USER, "max_tokens": 2048}, "between 1 and 2047"),
    "no-messages": ({"model": "x"}, "`messages` is required"),
    "tools": ({"messages": USER, "tools": []}, "unsupported field(s) tools"),
    "n": ({"messages": USER, "n": 2}, "n must be 1"),
    "penalty": ({"messages": USER, "presence_penalty": 1}, "presence_penalty"),
    "json-mode": ({"messages": USER, "response_format": {"type": "json_object"}}, "response_format"),
    "stop-type": ({"messages": USER, "stop": 5}, "stop must be"),
    "stop-many": ({"messages": USER, "stop": list("abcde")}, "at most 4"),
    "stop-empty": ({"messages": USER, "stop": [""]}, "1 to 64"),
    "stream-type": ({"messages": USER, "stream": "yes"}, "stream must be"),
    "disagree": ({"messages": USER, "max_tokens": 3, "max_completion_tokens": 4}, "disagree"),
    "not-object": ([USER], "JSON object"),
}


@pytest.mark.parametrize("body, message", OPENAI_BAD.values(), ids=OPENAI_BAD.keys())
def test_bad_openai_requests(body, message: str) -> None:
    with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_chat_completion(body, CAP)


SCORE_BAD = {
    "not-json": ("{nope", "not valid JSON"),
    "empty-body": ("", "empty"),
    "not-an-object": ([1, 2], "JSON object"),
    "no-known-key": ({"prompt": "hi"}, "needs `messages`"),
    "empty-messages": ({"messages": []}, "empty"),
    "messages-not-list": ({"messages": "hi"}, "must be a list"),
    "message-not-object": ({"messages": ["hi"]}, "must be an object"),
    "unknown-role": ({"messages": [{"role": "tool", "content": "x"}]}, "role must be one of"),
    "no-content": ({"messages": [{"role": "user"}]}, "no content"),
    "content-not-string": ({"messages": [{"role": "user", "content": 5}]}, "must be a string"),
    "only-system": ({"messages": [{"role": "system", "content": "x"}]}, "only system"),
    "max-tokens-zero": ({"messages": USER, "max_tokens": 0}, "between 1 and"),
    "max-tokens-negative": ({"messages": USER, "max_tokens": -5}, "between 1 and"),
    "max-tokens-over-cap": ({"messages": USER, "max_tokens": 100_000}, "between 1 and"),
    "max-tokens-string": ({"messages": USER, "max_tokens": "10"}, "must be an integer"),
    "max-tokens-bool": ({"messages": USER, "max_tokens": True}, "must be an integer"),
    "max-tokens-fraction": ({"messages": USER, "max_tokens": 2.5}, "must be an integer"),
    "temperature-high": ({"messages": USER, "temperature": 2.5}, "temperature must be between 0 and 2"),
    "temperature-negative": ({"messages": USER, "temperature": -0.1}, "temperature"),
    "temperature-string": ({"messages": USER, "temperature": "hot"}, "temperature must be a number"),
    "top-p-zero": ({"messages": USER, "top_p": 0}, "top_p"),
    "top-p-high": ({"messages": USER, "top_p": 1.5}, "top_p"),
    "unknown-parameter": ({"messages": USER, "max_tokenz": 5}, "unknown parameter"),
    "conflicting-limits": ({"messages": USER, "max_tokens": 5, "max_new_tokens": 6}, "disagree"),
    "stream": ({"messages": USER, "stream": True}, "/v1/chat/completions"),
    "do-sample-string": ({"messages": USER, "do_sample": "yes"}, "do_sample must be true or false"),
    "registry-no-input-string": ({"input_data": {"parameters": {}}}, "input_string"),
    "registry-extra-field": ({"input_data": {"input_string": USER, "foo": 1}}, "unknown field"),
    "registry-params-not-object": ({"input_data": {"input_string": USER, "parameters": [1]}}, "must be an object"),
    "registry-bad-max": ({"input_data": {"input_string": USER, "parameters": {"max_new_tokens": 0}}}, "between 1 and"),
    "registry-two-chats": ({"input_data": {"input_string": [USER, USER]}}, "2 conversations"),
    "beside-input-data": ({"input_data": ["a"], "extra": 1}, "beside input_data"),
    "mlflow-empty": ({"input_data": []}, "empty"),
    "mlflow-several-texts": ({"input_data": ["a", "b"]}, "several texts"),
    "mlflow-bad-type": ({"input_data": 5}, "object or a list"),
    "mlflow-bad-params": ({"input_data": ["a"], "params": {"top_p": 2}}, "top_p"),
    # raw JSON that once made the old scoring script answer 500
    "temperature-beyond-float": ('{"messages": [{"role": "user", "content": "hi"}], "temperature": 1' + "0" * 400 + "}",
                                 "temperature"),
    "nested-too-deep": ('{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    "lone-surrogate": ('{"messages": [{"role": "user", "content": "a\\ud800b"}]}', "not valid Unicode"),
    "lone-surrogate-mlflow-text": ('{"input_data": ["a\\udfffb"]}', "not valid Unicode"),
    "not-utf8": (b"\xff\xfe{}", "not UTF-8"),
}


@pytest.mark.parametrize("body, message", SCORE_BAD.values(), ids=SCORE_BAD.keys())
def test_bad_score_requests(body, message: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(body if isinstance(body, (str, bytes)) else json.dumps(body))
    assert message in str(info.value)
