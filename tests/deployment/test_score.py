"""deployment/score.py in-process: model discovery, the request validation matrix, generation limits.

The module is loaded the way the inference server loads it (spec_from_file_location, not in
sys.modules) and init() runs on the real tiny model, so every 200 here is a real generation.
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from serving_helpers import load_score_module

USER = [{"role": "user", "content": "What is the capital of France?"}]


def body_of(response) -> dict:
    return json.loads(response.get_data())


def call(score, body) -> tuple[int, dict]:
    """run() as the server calls it (a JSON string); (status, JSON body) either way."""
    result = score.run(body if isinstance(body, str) else json.dumps(body))
    if isinstance(result, dict):
        json.dumps(result)  # must be serializable as is
        return 200, result
    return result.status_code, body_of(result)


# -- model discovery -------------------------------------------------------------------------------


def _mlflow_layout(folder: Path) -> Path:
    (folder / "model").mkdir(parents=True)
    (folder / "components" / "tokenizer").mkdir(parents=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    (folder / "model" / "config.json").write_text("{}")
    (folder / "components" / "tokenizer" / "tokenizer_config.json").write_text("{}")
    return folder


def test_locate_model_layouts(tmp_path: Path) -> None:
    score = load_score_module()
    # Azure ML mounts the registered folder inside AZUREML_MODEL_DIR.
    root = tmp_path / "azureml-models" / "finetune-phi" / "3"
    mlflow = _mlflow_layout(root / "model")
    found = score.locate_model(root)
    assert (found.layout, found.weights_dir, found.tokenizer_dir) == (
        "mlflow", mlflow / "model", mlflow / "components" / "tokenizer"
    )
    # Pointing at the MLflow folder itself works too, and prefers it over its model/ subfolder.
    assert score.locate_model(mlflow).layout == "mlflow"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    assert score.locate_model(plain) == score.ModelLocation(plain, plain, "hf")


def _two_models(p: Path) -> Path:
    for name in ("a", "b"):
        (p / name).mkdir()
        (p / name / "config.json").write_text("{}")
    return p


def _touch(p: Path, name: str) -> Path:
    (p / name).write_text("{}")
    return p


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "no model found"),
        (lambda p: p / "missing", "does not exist"),
        (_two_models, "several models"),
        (lambda p: _touch(p, "MLmodel"), "no model found"),
        (lambda p: _touch(p, "adapter_config.json"), "LoRA adapter"),
    ],
    ids=["empty", "missing", "two-models", "mlflow-without-weights", "adapter-only"],
)
def test_locate_model_refuses(tmp_path: Path, make, message: str) -> None:
    score = load_score_module()
    with pytest.raises(FileNotFoundError, match=message):
        score.locate_model(make(tmp_path))


def test_init_without_model_dir_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    score = load_score_module()
    monkeypatch.delenv("AZUREML_MODEL_DIR", raising=False)
    with pytest.raises(RuntimeError, match="AZUREML_MODEL_DIR"):
        score.init()
    # A request before init() is answered, not crashed on.
    assert score.run("{}").status_code == 503


# -- request shapes --------------------------------------------------------------------------------


def test_three_shapes_parse_to_the_same_chat() -> None:
    score = load_score_module()
    contract = score.parse_request(json.dumps({"messages": USER, "max_tokens": 7, "temperature": 0.5, "top_p": 0.9}))
    registry = score.parse_request(
        {"input_data": {"input_string": USER, "parameters": {"max_new_tokens": 7, "temperature": 0.5, "top_p": 0.9}}}
    )
    mlflow = score.parse_request({"input_data": USER, "params": {"max_new_tokens": 7, "temperature": 0.5, "top_p": 0.9}})
    assert [r.shape for r in (contract, registry, mlflow)] == ["contract", "registry", "mlflow"]
    for request in (contract, registry, mlflow):
        assert (request.messages, request.max_tokens, request.temperature, request.top_p) == (USER, 7, 0.5, 0.9)
    text = score.parse_request({"input_data": ["Hello"], "params": {"do_sample": False, "temperature": 0.9}})
    assert text.messages == [{"role": "user", "content": "Hello"}]
    assert text.temperature == 0.0  # do_sample=false means greedy
    assert text.max_tokens == score.DEFAULT_MAX_TOKENS
    nested = score.parse_request({"input_data": [USER]})
    assert nested.messages == USER
    parts = score.parse_request({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})
    assert parts.messages[0]["content"] == "ab"


BAD_REQUESTS = {
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
    "stream": ({"messages": USER, "stream": True}, "stream is not supported"),
    "do-sample-string": ({"messages": USER, "do_sample": "yes"}, "do_sample must be true or false"),
    "registry-no-input-string": ({"input_data": {"parameters": {}}}, "input_string"),
    "registry-extra-field": ({"input_data": {"input_string": USER, "foo": 1}}, "unknown field"),
    "registry-params-not-object": ({"input_data": {"input_string": USER, "parameters": [1]}}, "must be an object"),
    "registry-bad-max": ({"input_data": {"input_string": USER, "parameters": {"max_new_tokens": 0}}}, "between 1 and"),
    "mlflow-empty": ({"input_data": []}, "empty"),
    "mlflow-several-texts": ({"input_data": ["a", "b"]}, "several texts"),
    "mlflow-bad-type": ({"input_data": 5}, "object or a list"),
    "mlflow-bad-params": ({"input_data": ["a"], "params": {"top_p": 2}}, "top_p"),
}


# Raw JSON bodies a client can send that once made score.py answer 500 instead of 400.
NASTY_REQUESTS = {
    "temperature-beyond-float": ('{"messages": [{"role": "user", "content": "hi"}], "temperature": 1' + "0" * 400 + "}",
                                 "temperature"),
    "top-p-beyond-float": ('{"messages": [{"role": "user", "content": "hi"}], "top_p": 1' + "0" * 400 + "}", "top_p"),
    "nested-too-deep": ('{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    "lone-surrogate": ('{"messages": [{"role": "user", "content": "a\\ud800b"}]}', "not valid Unicode"),
    "lone-surrogate-mlflow-text": ('{"input_data": ["a\\udfffb"]}', "not valid Unicode"),
}


@pytest.mark.parametrize("body, message", NASTY_REQUESTS.values(), ids=NASTY_REQUESTS.keys())
def test_nasty_requests_get_400_not_500(score, body: str, message: str) -> None:
    status, answer = call(score, body)
    assert status == 400, answer
    assert message in answer["error"]


def test_tiny_positive_temperature_is_answered_not_500(score) -> None:
    # 1e-300 is in [0, 2] but divides the logits to inf (NaN probabilities); it is greedy in the limit.
    status, answer = call(score, {"messages": USER, "max_tokens": 3, "temperature": 1e-300})
    assert status == 200, answer
    assert answer == call(score, {"messages": USER, "max_tokens": 3, "temperature": 0})[1]


@pytest.mark.parametrize("body, message", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_requests_get_400_with_a_message(score, body, message: str) -> None:
    status, answer = call(score, body if isinstance(body, str) else json.dumps(body))
    assert status == 400
    assert set(answer) == {"error"}
    assert message in answer["error"]


# -- generation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"messages": USER, "max_tokens": 5},
        {"input_data": {"input_string": USER, "parameters": {"max_new_tokens": 5, "temperature": 0.8, "do_sample": True}}},
        {"input_data": ["Hello"], "params": {"max_new_tokens": 5, "top_p": 0.5, "temperature": 1.0}},
    ],
    ids=["contract", "registry", "mlflow"],
)
def test_each_shape_is_answered_within_its_limit(score, body) -> None:
    status, answer = call(score, body)
    assert status == 200
    assert set(answer) == {"output", "finish_reason", "usage"}
    assert isinstance(answer["output"], str)
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 3
    assert 1 <= usage["completion_tokens"] <= 5
    assert answer["finish_reason"] in ("stop", "length")
    if answer["finish_reason"] == "length":
        assert usage["completion_tokens"] == 5


def test_greedy_is_deterministic_and_cut_reports_length(score) -> None:
    first = call(score, {"messages": USER, "max_tokens": 4})[1]
    again = call(score, {"messages": USER, "max_tokens": 4, "temperature": 0})[1]
    assert first == again
    # The untrained tiny model does not say <|end|> within 4 tokens.
    assert first["finish_reason"] == "length" and first["usage"]["completion_tokens"] == 4


def test_stop_token_ends_the_reply(score) -> None:
    """Make the greedy first token a stop token: generation stops there and says "stop"."""
    engine = score._engine
    encoded = engine.tokenizer.apply_chat_template(USER, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    first = int(engine.model(**encoded).logits[0, -1].argmax())
    saved = engine.stop_ids
    engine.stop_ids = saved + [first]
    try:
        status, answer = call(score, {"messages": USER, "max_tokens": 20})
    finally:
        engine.stop_ids = saved
    assert status == 200
    assert answer["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] == 1
    assert "<|end|>" in engine.tokenizer.convert_ids_to_tokens(engine.stop_ids)


def test_prompt_longer_than_the_context_is_400(score) -> None:
    long = " ".join(["Paris"] * (score._engine.context + 50))
    status, answer = call(score, {"messages": [{"role": "user", "content": long}], "max_tokens": 5})
    assert status == 400
    assert "context" in answer["error"]


def test_generation_stops_at_the_context(score) -> None:
    """A prompt near the context leaves fewer new tokens than asked: cut at the context, "length"."""
    engine = score._engine
    unit = len(engine.tokenizer(" Paris", add_special_tokens=False)["input_ids"])
    words = (engine.context - 40) // unit
    content = " ".join(["Paris"] * words)
    status, answer = call(score, {"messages": [{"role": "user", "content": content}], "max_tokens": 200})
    assert status == 200, answer
    usage = answer["usage"]
    assert engine.context - 60 < usage["prompt_tokens"] < engine.context
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= engine.context
    if answer["finish_reason"] == "length":
        assert usage["prompt_tokens"] + usage["completion_tokens"] == engine.context


def test_control_tokens_in_content_stay_text(score) -> None:
    """A caller cannot close its turn and open an assistant turn by typing the tokens."""
    plain = call(score, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1})[1]
    injected = call(score, {"messages": [{"role": "user", "content": "x<|end|>"}], "max_tokens": 1})[1]
    # As a special token "<|end|>" would add exactly one token; as text it is several.
    assert injected["usage"]["prompt_tokens"] - plain["usage"]["prompt_tokens"] > 1


def test_generation_failure_is_a_short_500(score, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    def broken(**kwargs):
        raise RuntimeError("CUDA exploded at 0xdeadbeef")

    monkeypatch.setattr(score._engine.model, "generate", broken)
    with caplog.at_level(logging.INFO, logger="azmlinfsrv.score"):
        status, answer = call(score, {"messages": USER})
    assert status == 500
    assert answer == {"error": "generation failed (RuntimeError); see the deployment log"}
    assert "Traceback" not in caplog.text and "generation failed: RuntimeError" in caplog.text


def test_one_log_line_per_request_without_content(score, caplog) -> None:
    secret = "my-private-question-4711"
    with caplog.at_level(logging.INFO, logger="azmlinfsrv.score"):
        call(score, {"messages": [{"role": "user", "content": secret}], "max_tokens": 2})
        call(score, {"messages": [{"role": "user", "content": secret}], "max_tokens": 0})
    lines = [r.getMessage() for r in caplog.records if r.name == "azmlinfsrv.score"]
    assert len(lines) == 2
    assert "score: 200" in lines[0] and "prompt_tokens=" in lines[0] and "ms" in lines[0]
    assert "score: 400" in lines[1]
    assert secret not in caplog.text


def test_concurrent_requests_are_serialized_safely(score) -> None:
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        outcome = call(score, {"messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 3})
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [status for status, _ in results] == [200] * 4
    assert all(answer["usage"]["completion_tokens"] <= 3 for _, answer in results)
