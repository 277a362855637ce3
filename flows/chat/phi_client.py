"""The project's one client for a Phi-3 endpoint (Azure ML online endpoint or local serve).

Used by the Prompt flow tool (flows/chat/chat.py) and by deployment's smoke test, so the request
and response logic lives only here. Standard library + `requests` only: this folder is uploaded to
Azure AI Foundry as is.

- APIs: `api="openai"` (this project's server, docs/ARCHITECTURE.md section 5): `endpoint` is the URL
  under which the server's OpenAI routes answer (`https://HOST`, or `https://HOST/score` where Azure ML
  forwards paths after the scoring route only; deploy probes which, deployment/endpoint_probe.py) and
  the client POSTs `{endpoint}/v1/chat/completions` (OpenAI Chat Completions) and reads
  `choices[0].message.content`. Without `api`, `endpoint` is a scoring URL (`.../score`) and the
  request takes one of the tutorials' shapes: "contract" (`messages` + sampling fields), "registry"
  (`input_data.input_string` + `parameters`), "mlflow" (`input_data` list + `params`).
- Response shapes (sections 5 and 6): `{"output": "..."}`, `["text"]`, `[{"0": "text"}]`, a bare
  string, a JSON document encoded as a string (what Azure ML returns when `run()` returns
  `json.dumps(...)`), and the OpenAI-style `choices` list.
- Status codes as Azure ML sends them: a managed online endpoint relays any non-200 answer of the
  container as 424, with the container's own code in the `ms-azureml-model-error-statuscode` header
  (Microsoft's online-endpoint troubleshooting doc). The client reads that code: a container 400
  ("prompt longer than the context cap") is reported as that 400 with its message, and a relayed 503
  or 429 is retried like a direct one.
- Retries, bounded: 429, 503 and connection resets, with exponential backoff or the server's
  Retry-After (capped; a relayed answer may have lost it). Every other failure becomes one
  `EndpointError` that says what to do.
- The key is sent only as the bearer header. It is never in a message, a log line or a repr.
"""
from __future__ import annotations

import email.utils
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable
from urllib.parse import urlparse

import requests

if __package__:  # imported from the repository (flows.chat.phi_client)
    from .endpoint_urls import openai_chat_url
else:  # run by Prompt flow: this folder is the working directory and on sys.path
    from endpoint_urls import openai_chat_url

REQUEST_FORMATS = ("contract", "registry", "mlflow")
APIS = ("openai",)  # None: the tutorials' /score dialects (REQUEST_FORMATS)
DEFAULT_PARAMS: dict[str, Any] = {"max_tokens": 256, "temperature": 0.7, "top_p": 0.9}
# About 4 characters per token: 8000 characters leave room for the answer in a 4k-token context.
DEFAULT_HISTORY_BUDGET_CHARS = 8000
RETRY_STATUSES = frozenset({429, 503})
UNHEALTHY_STATUSES = frozenset({408, 424})
RELAYED = 424
"""What an Azure ML managed online endpoint answers when the container answered anything but 200."""
MODEL_STATUS_HEADER = "ms-azureml-model-error-statuscode"
"""The container's own status code on a relayed (424) answer."""
MODEL_REASON_HEADER = "ms-azureml-model-error-reason"
"""Azure ML's short reason on a relayed answer, when it sends one (read only when the body says nothing)."""
MAX_RETRY_AFTER_S = 30.0
_SNIPPET = 300


class EndpointError(Exception):
    """A failed call to the scoring endpoint.

    `status` is the container's HTTP status (the original one when Azure ML relayed it as 424), None
    when no answer came; `relayed_as` is the status the endpoint itself sent when it differs (424).
    """

    def __init__(self, message: str, status: int | None = None, relayed_as: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.relayed_as = relayed_as


def container_status(status: int, headers: Any) -> int:
    """The status the container sent: Azure ML relays any non-200 as 424 with the original in a header."""
    if status != RELAYED:
        return status
    original = str(headers.get(MODEL_STATUS_HEADER) or "").strip()
    return int(original) if original.isdigit() and 100 <= int(original) <= 599 else status


@dataclass(frozen=True)
class ChatReply:
    """The assistant's answer; `raw` is the decoded response body as the endpoint sent it."""

    text: str
    finish_reason: str | None = None
    raw: Any = field(default=None, repr=False)
    usage: dict | None = None


def history_to_messages(history: Iterable[Any] | None) -> list[dict[str, str]]:
    """Turn chat history into role/content messages.

    Accepts Prompt flow's format (`{"inputs": {"question": ...}, "outputs": {"answer": ...}}`)
    and plain messages (`{"role": ..., "content": ...}`), so callers outside Prompt flow can pass
    what they already have.
    """
    messages: list[dict[str, str]] = []
    for i, turn in enumerate(history or []):
        if not isinstance(turn, dict):
            raise ValueError(f"chat_history[{i}] must be an object, got {type(turn).__name__}")
        if "role" in turn and "content" in turn:
            messages.append({"role": str(turn["role"]), "content": str(turn["content"])})
            continue
        inputs, outputs = turn.get("inputs"), turn.get("outputs")
        if not isinstance(inputs, dict) or not isinstance(outputs, dict):
            raise ValueError(
                f"chat_history[{i}] must look like "
                '{"inputs": {"question": ...}, "outputs": {"answer": ...}} or {"role": ..., "content": ...}'
            )
        question = inputs.get("question", "")
        answer = outputs.get("answer", "")
        if question:
            messages.append({"role": "user", "content": str(question)})
        if answer:
            messages.append({"role": "assistant", "content": str(answer)})
    return messages


def build_messages(
    question: str,
    history: Iterable[Any] | None = None,
    *,
    system_prompt: str | None = None,
    budget_chars: int = DEFAULT_HISTORY_BUDGET_CHARS,
) -> list[dict[str, str]]:
    """System message (if any) + as many of the latest history turns as fit + the question.

    The oldest turns go first when the total content exceeds `budget_chars`; a user turn is dropped
    together with the assistant answer that follows it, so the conversation still alternates.
    The system message and the question are always kept, even when they alone exceed the budget
    (the endpoint then answers 400 with its own limit).
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty: type a question to send to the model")
    past = history_to_messages(history)
    system: list[dict[str, str]] = []
    if past and past[0]["role"] == "system":
        system, past = [past[0]], past[1:]
    if system_prompt:
        system = [{"role": "system", "content": system_prompt}]
    fixed = sum(len(m["content"]) for m in system) + len(question)
    turns = _group_turns(past)
    kept: list[list[dict[str, str]]] = []
    used = fixed
    for turn in reversed(turns):
        size = sum(len(m["content"]) for m in turn)
        if used + size > budget_chars:
            break
        kept.append(turn)
        used += size
    body = [m for turn in reversed(kept) for m in turn]
    return system + body + [{"role": "user", "content": question}]


def _group_turns(messages: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    """Group messages into turns, each starting at a user message."""
    turns: list[list[dict[str, str]]] = []
    for message in messages:
        if message["role"] == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return turns


def build_payload(messages: list[dict[str, str]], request_format: str, params: dict[str, Any]) -> dict:
    """The request body in one of the three shapes of docs/ARCHITECTURE.md section 5."""
    max_tokens = int(params["max_tokens"])
    temperature = float(params["temperature"])
    top_p = float(params["top_p"])
    if request_format == "contract":
        return {"messages": messages, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
    generation = {
        "max_new_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "do_sample": temperature > 0,
    }
    if request_format == "registry":
        return {"input_data": {"input_string": messages, "parameters": generation}}
    if request_format == "mlflow":
        return {"input_data": messages, "params": generation}
    raise ValueError(f"request_format must be one of {', '.join(REQUEST_FORMATS)}, got {request_format!r}")


def parse_openai_reply(body: Any) -> ChatReply | None:
    """Read an OpenAI Chat Completions response (`choices[0].message.content`); None otherwise."""
    if not isinstance(body, dict):
        return None
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        return None
    reason = choices[0].get("finish_reason")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    return ChatReply(content, str(reason) if reason is not None else None, body, usage)


openai_url = openai_chat_url
"""`{base}/v1/chat/completions` from a server's base URL (the rules: flows/chat/endpoint_urls.py)."""


def parse_reply(body: Any) -> ChatReply | None:
    """Read any of the known response shapes; None when the shape is unknown."""
    if isinstance(body, str):
        stripped = body.strip()
        if stripped[:1] in ("{", "["):  # a JSON document returned as a JSON string
            try:
                inner = json.loads(stripped)
            except ValueError:
                return ChatReply(text=body, raw=body)
            reply = parse_reply(inner)
            return ChatReply(reply.text, reply.finish_reason, body, reply.usage) if reply else None
        return ChatReply(text=body, raw=body)
    if isinstance(body, list):
        if not body:
            return None
        reply = parse_reply(body[0])
        return ChatReply(reply.text, reply.finish_reason, body, reply.usage) if reply else None
    if isinstance(body, dict):
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
        finish = body.get("finish_reason")
        finish = str(finish) if finish is not None else None
        for key in ("output", "0", "generated_text", "text", "answer"):
            if key in body:
                value = body[key]
                if isinstance(value, str):
                    return ChatReply(value, finish, body, usage)
                reply = parse_reply(value)
                return ChatReply(reply.text, finish or reply.finish_reason, body, usage or reply.usage) if reply else None
        choices = body.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            message = choice.get("message")
            content = message.get("content") if isinstance(message, dict) else choice.get("text")
            if isinstance(content, str):
                reason = choice.get("finish_reason")
                return ChatReply(content, str(reason) if reason is not None else None, body, usage)
    return None


class PhiClient:
    """Send a chat to a Phi-3 endpoint and read the reply.

    Without `api`, `endpoint` is the scoring URL (`https://<name>.<region>.inference.ml.azure.com/score`
    or a local `http://127.0.0.1:<port>/score`) and `request_format` picks the body. With
    `api="openai"`, `endpoint` is the server's base URL (`https://<name>.<region>.inference.ml.azure.com`
    or `http://127.0.0.1:<port>`) and the client calls its `/v1/chat/completions`. `key` is sent as a
    bearer token; `deployment`, when given, goes in the `azureml-model-deployment` header (pins one
    deployment behind the endpoint).
    """

    def __init__(
        self,
        endpoint: str,
        key: str,
        deployment: str | None = None,
        request_format: str = "contract",
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        *,
        system_prompt: str | None = None,
        history_budget_chars: int = DEFAULT_HISTORY_BUDGET_CHARS,
        max_retry_after: float = MAX_RETRY_AFTER_S,
        default_params: dict[str, Any] | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        api: str | None = None,
    ) -> None:
        endpoint = (endpoint or "").strip()
        parsed = urlparse(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"endpoint must be an http(s) URL, got {endpoint!r}")
        if not key:
            raise ValueError("the endpoint key is empty: re-run `python -m deployment.deploy` to write it")
        if request_format not in REQUEST_FORMATS:
            raise ValueError(f"request_format must be one of {', '.join(REQUEST_FORMATS)}, got {request_format!r}")
        api = api or None
        if api is not None and api not in APIS:
            raise ValueError(f"api must be one of {', '.join(APIS)} or unset (the /score dialects), got {api!r}")
        if api == "openai" and request_format != "contract":
            raise ValueError(
                f"request_format={request_format!r} applies to /score endpoints only; with api='openai' leave it unset"
            )
        if max_retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError("timeout must be > 0, max_retries and backoff >= 0")
        self.endpoint = endpoint
        self.api = api
        # where requests go: the scoring URL itself, or the OpenAI route under the base URL
        self.url = openai_url(endpoint) if api == "openai" else endpoint
        self.deployment = deployment or None
        self.request_format = request_format
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.system_prompt = system_prompt
        self.history_budget_chars = int(history_budget_chars)
        self.max_retry_after = float(max_retry_after)
        self.default_params = {**DEFAULT_PARAMS, **(default_params or {})}
        self.__key = key  # name-mangled and never printed; see _redact
        self._session = session or requests.Session()
        self._sleep = sleep

    def __repr__(self) -> str:
        deployment = f", deployment={self.deployment!r}" if self.deployment else ""
        speaks = f"api={self.api!r}" if self.api else f"request_format={self.request_format!r}"
        return f"PhiClient(endpoint={self.endpoint!r}{deployment}, {speaks}, key=<hidden>)"

    # -- public API -------------------------------------------------------------------------

    def chat(self, question: str, history: list[dict] | None = None, **params: Any) -> ChatReply:
        """Ask `question` after `history`; params: max_tokens, temperature, top_p, system_prompt."""
        system_prompt = params.pop("system_prompt", self.system_prompt)
        if "max_new_tokens" in params:
            params.setdefault("max_tokens", params.pop("max_new_tokens"))
        unknown = set(params) - set(DEFAULT_PARAMS)
        if unknown:
            raise TypeError(f"unknown chat parameter(s): {', '.join(sorted(unknown))}")
        merged = {**self.default_params, **{k: v for k, v in params.items() if v is not None}}
        messages = build_messages(
            question, history, system_prompt=system_prompt, budget_chars=self.history_budget_chars
        )
        # the contract body is the OpenAI Chat Completions body: messages, max_tokens, temperature, top_p
        payload = build_payload(messages, "contract" if self.api == "openai" else self.request_format, merged)
        return self.send(payload)

    def send(self, payload: dict) -> ChatReply:
        """POST a ready-made payload and parse the reply (retries included)."""
        response = self._post_with_retries(payload)
        return self._read(response)

    # -- HTTP ---------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Authorization": f"Bearer {self.__key}",
        }
        if self.deployment:
            headers["azureml-model-deployment"] = self.deployment
        return headers

    def _post_with_retries(self, payload: dict) -> requests.Response:
        data = json.dumps(payload)
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._session.post(self.url, data=data, headers=self._headers(), timeout=self.timeout)
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
                if attempt < attempts:
                    self._sleep(self._delay(attempt, None))
                    continue
                raise EndpointError(
                    f"could not reach the endpoint {self.endpoint} after {attempts} attempt(s): "
                    f"{self._redact(_short(err))}. Check the URL in the phi_endpoint connection "
                    "(re-run `python -m deployment.deploy` to rewrite it) and that the endpoint is running.",
                    status=None,
                ) from None
            except requests.exceptions.Timeout:  # a read timeout (connect timeouts are ConnectionErrors)
                # Not retried: the model may still be generating, a second request doubles the load.
                raise EndpointError(
                    f"the endpoint {self.endpoint} gave no answer within {self.timeout:g} s. "
                    "Ask for fewer tokens (max_tokens), raise the timeout, or check the deployment's "
                    f"request timeout and logs ({self._logs_hint()}).",
                    status=None,
                ) from None
            except requests.exceptions.RequestException as err:
                raise EndpointError(
                    f"the request to {self.endpoint} failed: {self._redact(_short(err))}", status=None
                ) from None
            status = container_status(response.status_code, response.headers)
            if status in RETRY_STATUSES and attempt < attempts:
                self._sleep(self._delay(attempt, response.headers.get("Retry-After")))
                continue
            if status == 429:
                raise EndpointError(
                    f"the endpoint {self.endpoint} is rate limiting requests (HTTP 429{_relayed(response)}) and "
                    f"still was after {attempts} attempt(s). An Azure ML endpoint admits 2 x "
                    "max_concurrent_requests_per_instance x instances requests at once: send fewer at a time, "
                    "wait a minute and ask again, or raise the deployment's instance count.",
                    status=429, relayed_as=_relayed_status(response),
                )
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before the next attempt: the server's Retry-After, else backoff * 2^n."""
        seconds = _parse_retry_after(retry_after)
        if seconds is None:
            seconds = self.backoff * (2 ** (attempt - 1)) * (1 + random.random() * 0.1)
        return max(0.0, min(seconds, self.max_retry_after))

    # -- responses ------------------------------------------------------------------------------

    def _read(self, response: requests.Response) -> ChatReply:
        status = container_status(response.status_code, response.headers)
        text = response.text or ""
        if 200 <= status < 300 and status == response.status_code:
            try:
                body = response.json()
            except ValueError:
                if text.strip() and not text.lstrip().startswith(("{", "[")):
                    return ChatReply(text=text, raw=text)  # a plain-text answer
                raise EndpointError(self._malformed(text), status=status) from None
            reply = parse_openai_reply(body) if self.api == "openai" else parse_reply(body)
            if reply is None:
                raise EndpointError(self._malformed(text), status=status)
            return reply
        if not _error_detail(text) and response.headers.get(MODEL_REASON_HEADER):
            text = str(response.headers[MODEL_REASON_HEADER])
        relayed = _relayed_status(response)
        raise EndpointError(self._error_message(status, text, relayed), status=status, relayed_as=relayed)

    def _malformed(self, text: str) -> str:
        got = f"the endpoint {self.url} answered with a response this client cannot read: " + (
            self._redact(_snippet(text)) or "(empty body)"
        )
        if self.api == "openai":
            return (
                f"{got}. Expected an OpenAI chat completion (choices[0].message.content). The connection "
                "says api=openai: if this endpoint is a tutorial's /score endpoint, remove `api` from the "
                "phi_endpoint connection and set `endpoint` to its scoring URL."
            )
        return (
            f"{got}. Expected {{\"output\": \"...\"}}, "
            '["text"] or [{"0": "text"}]. Check request_format in the phi_endpoint connection '
            f"(now {self.request_format!r}; one of {', '.join(REQUEST_FORMATS)}) and the scoring script."
        )

    def _error_message(self, status: int, text: str, relayed_as: int | None = None) -> str:
        """One message per status; `relayed_as`: the endpoint answered that (424) for the container's `status`."""
        detail = self._redact(_error_detail(text)) or "(no error text)"
        where = f"the endpoint {self.endpoint}"
        code = f"HTTP {status}" + (f" from the container, relayed by Azure ML as HTTP {relayed_as}" if relayed_as else "")
        if status in (401, 403) and not relayed_as:
            return (
                f"{where} refused the key ({code}): the key is wrong or was rotated. "
                "Re-run `python -m deployment.deploy` to write the current key into the phi_endpoint "
                "connection (or `pf connection create --file <yaml> --name phi_endpoint` with the key from "
                "`az ml online-endpoint get-credentials`)."
            )
        if status == 404 and relayed_as:  # the endpoint exists; the server in the deployment has no such route or model
            return (f"the deployment behind {where} has no such route or model ({code}): {detail}. The client called "
                    f"{self.url}; check the connection's `endpoint` (deploy probes which base answers /v1).")
        if status == 404:
            target = f" or its deployment {self.deployment!r}" if self.deployment else ""
            route = (
                f" The client called {self.url} because the connection says api=openai; a tutorial's "
                "/score endpoint has no such route: remove `api` from the connection for it."
                if self.api == "openai" else ""
            )
            return (
                f"{where}{target} was not found ({code}): it was deleted, or the URL in the "
                "phi_endpoint connection is wrong. Re-run `python -m deployment.deploy` to create it "
                f"and rewrite the connection.{route}"
            )
        if 400 <= status < 500 and status not in UNHEALTHY_STATUSES | RETRY_STATUSES:
            return f"{where} rejected the request ({code}): {detail}"
        if status in UNHEALTHY_STATUSES or status >= 500:
            retried = f" after {self.max_retries + 1} attempt(s)" if status in RETRY_STATUSES else ""
            return (
                f"the deployment behind {where} is unhealthy ({code}{retried}): "
                f"{detail}. See its logs: {self._logs_hint()}."
            )
        return f"{where} answered {code}: {detail}"

    def _logs_hint(self) -> str:
        host = urlparse(self.endpoint).hostname or ""
        if host.endswith(".inference.ml.azure.com"):
            name = host.split(".")[0]
            deployment = self.deployment or "<deployment>"
            return (
                f"`az ml online-deployment get-logs --endpoint-name {name} --name {deployment} --lines 200` "
                f"or Azure ML studio > Endpoints > {name} > Logs"
            )
        return "the output of the local server (`python -m deployment.serve`) or its log file"

    def _redact(self, text: str) -> str:
        return text.replace(self.__key, "<hidden>") if self.__key else text


def _relayed_status(response: requests.Response) -> int | None:
    """The endpoint's own status when it relayed another one from the container (424), else None."""
    status = response.status_code
    return status if container_status(status, response.headers) != status else None


def _relayed(response: requests.Response) -> str:
    relayed = _relayed_status(response)
    return f" from the container, relayed by Azure ML as HTTP {relayed}" if relayed is not None else ""


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_detail(text: str) -> str:
    """The endpoint's own error text: `{"error": ...}`/`{"message": ...}` when JSON, else the body."""
    try:
        body = json.loads(text)
    except ValueError:
        return _snippet(text)
    if isinstance(body, str):
        return _error_detail(body) if body.strip()[:1] == "{" else _snippet(body)
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message") or json.dumps(value)
            if value:
                return _snippet(str(value))
    return _snippet(text)


def _snippet(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


def _short(err: BaseException) -> str:
    """A connection error's gist (requests nests urllib3's long repr)."""
    message = str(err)
    for marker in ("Connection refused", "Connection reset", "Name or service not known", "RemoteDisconnected"):
        if marker in message:
            return marker
    return _snippet(message)

