"""Request bodies in, one validated `ChatRequest` out; replies shaped for the dialect that asked.

Four dialects (docs/ARCHITECTURE.md section 5):
  openai    POST /v1/chat/completions: {"messages", "max_tokens" | "max_completion_tokens",
            "temperature", "top_p", "stop", "stream", "stream_options"}
  contract  POST /score {"messages": [...], "max_tokens": 128, "temperature": 0.7, "top_p": 0.9}
            -> {"output", "finish_reason", "usage"}
  registry  POST /score {"input_data": {"input_string": [msgs] | [[msgs]], "parameters": {...}}}
            (the azureml registry's chat format; "params": {} beside input_data is fine)
            -> the same object as contract
  mlflow    POST /score {"input_data": ["text"] | [msgs] | [[msgs]], "params": {...}}
            -> ["<reply>"] (a JSON list: the first tutorial's client reads response.json()[0])

Everything here is pure Python: no model, no web framework. A malformed or out-of-range request
raises RequestError (answered 400 with its message); limits that depend on the model (the
max_tokens cap) come in as arguments.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_TOKENS = 256
DEFAULT_TEMPERATURE = 0.0  # greedy unless the caller asks for sampling: reproducible answers
DEFAULT_TOP_P = 1.0
MAX_BODY_BYTES = 1_000_000
MAX_STOP_SEQUENCES = 4  # as the OpenAI API
MAX_STOP_CHARS = 64
ROLES = ("system", "user", "assistant")
# /score parameters. Tutorials' clients also send do_sample and return_full_text: do_sample=false
# forces greedy decoding; return_full_text is accepted and ignored (replies never repeat the prompt).
SCORE_PARAMETERS = ("max_tokens", "max_new_tokens", "temperature", "top_p", "do_sample", "return_full_text")
# OpenAI fields accepted and ignored: they name the model (one is served), or carry metadata.
OPENAI_IGNORED = ("model", "user", "metadata", "store", "seed", "service_tier", "parallel_tool_calls")
OPENAI_FIELDS = ("messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "stream",
                 "stream_options", "n", "frequency_penalty", "presence_penalty", "logprobs", "response_format",
                 *OPENAI_IGNORED)


class RequestError(ValueError):
    """The request is malformed or out of range: answered with HTTP 400 and this message."""


@dataclass(frozen=True)
class ChatRequest:
    """One conversation and how to continue it, whichever dialect it came in."""

    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float  # 0 means greedy
    top_p: float
    shape: str  # "openai", "contract", "registry" or "mlflow"
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk carrying usage


# -- JSON ------------------------------------------------------------------------------------------


def decode_body(raw: bytes | str) -> Any:
    """The request body as JSON, or RequestError naming what is wrong with it."""
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > MAX_BODY_BYTES:
            raise RequestError(f"request body is larger than {MAX_BODY_BYTES} bytes")
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("request body is not UTF-8 text") from None
    if not raw.strip():
        raise RequestError("request body is empty: send a JSON object with Content-Type: application/json")
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError(f"request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(raw)
    except RecursionError:
        raise RequestError("request body is nested too deeply") from None
    except ValueError as err:
        raise RequestError(f"request body is not valid JSON ({type(err).__name__} at position "
                           f"{getattr(err, 'pos', '?')})") from None


# -- messages --------------------------------------------------------------------------------------


def _text(value: str, where: str) -> str:
    try:  # JSON escapes can carry lone surrogates, which the tokenizer cannot encode
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(f"{where} is not valid Unicode (a lone surrogate escape such as \\ud800)") from None
    return value


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return _text(value, where)
    if isinstance(value, list):  # OpenAI-style content parts: only text parts are supported
        parts = []
        for i, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise RequestError(f"{where}[{i}] must be a text part {{\"type\": \"text\", \"text\": \"...\"}}")
            parts.append(_text(part["text"], f"{where}[{i}].text"))
        return "".join(parts)
    raise RequestError(f"{where} must be a string, got {type(value).__name__}")


def parse_messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise RequestError(f"{where} must be a list of messages, got {type(value).__name__}")
    if not value:
        raise RequestError(f"{where} is empty: send at least one message")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise RequestError(f"{where}[{i}] must be an object with role and content")
        role = message.get("role")
        if role == "developer":  # newer OpenAI clients' name for the system role
            role = "system"
        if role not in ROLES:
            raise RequestError(f"{where}[{i}].role must be one of {', '.join(ROLES)}")
        if "content" not in message or message["content"] is None:
            raise RequestError(f"{where}[{i}] has no content")
        messages.append({"role": role, "content": _content(message["content"], f"{where}[{i}].content")})
    if all(m["role"] == "system" for m in messages):
        raise RequestError(f"{where} has only system messages: add a user message")
    return messages


def _conversation(value: Any, where: str) -> list[dict[str, str]]:
    """Messages, or a list holding exactly one conversation (the registry tutorial's sample_score.json)."""
    if isinstance(value, list) and value and all(isinstance(item, list) for item in value):
        if len(value) != 1:
            raise RequestError(f"{where} holds {len(value)} conversations: send one per request")
        return parse_messages(value[0], f"{where}[0]")
    return parse_messages(value, where)


# -- parameters ------------------------------------------------------------------------------------


def _number(params: dict, name: str, default: float) -> float:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{name} must be a number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:  # a JSON integer beyond the float range
        raise RequestError(f"{name} is out of range") from None


def _max_tokens(value: Any, name: str, cap: int) -> int:
    if value is None:
        return min(DEFAULT_MAX_TOKENS, cap)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {type(value).__name__}")
    if not 1 <= value <= cap:
        raise RequestError(f"{name} must be between 1 and {cap} (this server's cap), got {value}")
    return value


def _sampling(params: dict) -> tuple[float, float]:
    temperature = _number(params, "temperature", DEFAULT_TEMPERATURE)
    if not 0.0 <= temperature <= 2.0:
        raise RequestError(f"temperature must be between 0 and 2, got {temperature:g}")
    top_p = _number(params, "top_p", DEFAULT_TOP_P)
    if not 0.0 < top_p <= 1.0:
        raise RequestError(f"top_p must be greater than 0 and at most 1, got {top_p:g}")
    return temperature, top_p


def _score_parameters(params: Any, where: str, cap: int) -> tuple[int, float, float]:
    """Validated (max_tokens, temperature, top_p) from a /score dialect's parameter object."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RequestError(f"{where} must be an object, got {type(params).__name__}")
    unknown = sorted(set(params) - set(SCORE_PARAMETERS))
    if unknown:
        raise RequestError(f"unknown parameter(s) {', '.join(unknown)[:200]}; accepted: {', '.join(SCORE_PARAMETERS)}")
    given = [params[k] for k in ("max_tokens", "max_new_tokens") if params.get(k) is not None]
    if len(given) == 2 and given[0] != given[1]:
        raise RequestError("max_tokens and max_new_tokens disagree: send one of them")
    max_tokens = _max_tokens(given[0] if given else None, "max_tokens", cap)
    temperature, top_p = _sampling(params)
    for flag in ("do_sample", "return_full_text"):
        if params.get(flag) is not None and not isinstance(params[flag], bool):
            raise RequestError(f"{flag} must be true or false")
    if params.get("do_sample") is False:
        temperature = 0.0
    return max_tokens, temperature, top_p


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise RequestError("stop must be a string or a list of strings")
    if len(items) > MAX_STOP_SEQUENCES:
        raise RequestError(f"stop takes at most {MAX_STOP_SEQUENCES} sequences, got {len(items)}")
    for s in items:
        if not s or len(s) > MAX_STOP_CHARS:
            raise RequestError(f"each stop sequence must be 1 to {MAX_STOP_CHARS} characters")
        _text(s, "stop")
    return tuple(dict.fromkeys(items))


# -- the dialects ----------------------------------------------------------------------------------


def parse_chat_completion(body: Any, cap: int) -> ChatRequest:
    """An OpenAI Chat Completions request (POST /v1/chat/completions)."""
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object with `messages`")
    unknown = sorted(set(body) - set(OPENAI_FIELDS))
    if unknown:
        raise RequestError(f"unsupported field(s) {', '.join(unknown)[:200]}")
    if "messages" not in body:
        raise RequestError("`messages` is required")
    messages = parse_messages(body["messages"], "messages")
    given = [(k, body[k]) for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None]
    if len(given) == 2 and given[0][1] != given[1][1]:
        raise RequestError("max_tokens and max_completion_tokens disagree: send one of them")
    max_tokens = _max_tokens(given[0][1] if given else None, given[0][0] if given else "max_tokens", cap)
    temperature, top_p = _sampling(body)
    if body.get("n") not in (None, 1):
        raise RequestError("n must be 1: this server returns one choice per request")
    for penalty in ("frequency_penalty", "presence_penalty"):
        if body.get(penalty) not in (None, 0, 0.0):
            raise RequestError(f"{penalty} is not supported (send 0 or leave it out)")
    if body.get("logprobs") not in (None, False):
        raise RequestError("logprobs are not supported")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise RequestError("response_format other than {\"type\": \"text\"} is not supported")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError("stream must be true or false")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("stream_options must be an object")
    include_usage = bool((options or {}).get("include_usage"))
    return ChatRequest(messages, max_tokens, temperature, top_p, "openai", _stop(body.get("stop")),
                       bool(stream), include_usage)


def parse_score(body: Any, cap: int) -> ChatRequest:
    """A /score request in one of the tutorials' three dialects."""
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object with `messages` or `input_data`")

    if "messages" in body:
        params = {k: v for k, v in body.items() if k not in ("messages", "stream")}
        if body.get("stream"):
            raise RequestError("stream is not supported on /score: use POST /v1/chat/completions")
        return ChatRequest(parse_messages(body["messages"], "messages"), *_score_parameters(params, "request", cap),
                           "contract")

    if "input_data" not in body:
        raise RequestError(
            "request body needs `messages` (a list of {role, content}) or `input_data` "
            "(Azure ML registry or MLflow chat format)"
        )
    extra = sorted(set(body) - {"input_data", "params"})
    if extra:
        raise RequestError(f"unknown field(s) {', '.join(extra)[:200]} beside input_data")
    data = body["input_data"]
    if isinstance(data, dict):
        if "input_string" not in data:
            raise RequestError("input_data must hold input_string (a list of messages)")
        unknown = sorted(set(data) - {"input_string", "parameters"})
        if unknown:
            raise RequestError(f"input_data has unknown field(s) {', '.join(unknown)[:200]}")
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise RequestError(f"params must be an object, got {type(params).__name__}")
        parameters = data.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise RequestError(f"input_data.parameters must be an object, got {type(parameters).__name__}")
        merged = {**params, **(parameters or {})}  # "params": {} beside input_data (sample_score.json)
        messages = _conversation(data["input_string"], "input_data.input_string")
        return ChatRequest(messages, *_score_parameters(merged, "input_data.parameters", cap), "registry")
    if isinstance(data, list):
        if not data:
            raise RequestError("input_data is empty: send one text or one conversation")
        if all(isinstance(item, str) for item in data):
            if len(data) != 1:
                raise RequestError("input_data holds several texts: send one per request")
            messages = [{"role": "user", "content": _content(data[0], "input_data[0]")}]
        else:
            messages = _conversation(data, "input_data")
        return ChatRequest(messages, *_score_parameters(body.get("params"), "params", cap), "mlflow")
    raise RequestError(f"input_data must be an object or a list, got {type(data).__name__}")


def parse_request(raw: Any, cap: int = 2048) -> ChatRequest:
    """A /score body (JSON text, bytes or a decoded object) as a ChatRequest."""
    body = decode_body(raw) if isinstance(raw, (str, bytes, bytearray)) else raw
    return parse_score(body, cap)


def score_reply(request: ChatRequest, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> Any:
    """The /score answer in the dialect that asked."""
    if request.shape == "mlflow":
        return [text]
    return {
        "output": text,
        "finish_reason": finish_reason,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }
