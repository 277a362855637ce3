"""The flow's one tool: ask the Phi-3 endpoint named by the `phi_endpoint` connection.

Connection (a Prompt flow CustomConnection):
- secret `key`: the endpoint key (sent as a bearer token);
- config `endpoint`: the scoring URL, or, when `api` is `openai`, the URL under which the server's
  `/v1/chat/completions` answers (`https://HOST`, or `https://HOST/score`: deploy probes which);
- optional configs: `api` (`openai`: this project's server, called on /v1/chat/completions; unset:
  a tutorial's /score endpoint, called as before), `deployment` (the `azureml-model-deployment`
  header), `request_format` (/score only: contract | registry | mlflow, default contract),
  `max_tokens`, `temperature`, `top_p`, `system_prompt`, `timeout`, `max_retries`,
  `history_budget_chars`.

`pf flow serve` accepts missing inputs silently, so the inputs are validated here.
"""
# No `from __future__ import annotations` here: Prompt flow reads the real annotation objects to
# know that `connection` is a CustomConnection (with string annotations it passes the name).
from typing import Any, Dict, Tuple

from promptflow.connections import CustomConnection
from promptflow.core import tool

try:  # run by Prompt flow: this folder is the working directory and on sys.path
    from phi_client import APIS, REQUEST_FORMATS, PhiClient
except ImportError:  # imported from the repository as a package
    from flows.chat.phi_client import APIS, REQUEST_FORMATS, PhiClient

_NUMBERS = {
    "timeout": float,
    "max_retries": int,
    "backoff": float,
    "history_budget_chars": int,
}
_PARAMS = {"max_tokens": int, "temperature": float, "top_p": float}


@tool
def chat(connection: CustomConnection, question: str, chat_history: list = None) -> str:
    """Send the question (after the chat history) to the endpoint and return the answer text."""
    if question is None or not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty: send a non-empty `question` input")
    if chat_history is None:
        chat_history = []
    if not isinstance(chat_history, list):
        raise ValueError(f"chat_history must be a list, got {type(chat_history).__name__}")
    client, params = client_from_connection(connection)
    return client.chat(question, chat_history, **params).text


def client_from_connection(connection: CustomConnection) -> Tuple[PhiClient, Dict[str, Any]]:
    """Build the client and the default generation parameters from the connection's fields."""
    configs = dict(connection.configs or {})
    key = (connection.secrets or {}).get("key")
    endpoint = configs.get("endpoint")
    name = getattr(connection, "name", None) or "phi_endpoint"
    if not endpoint:
        raise ValueError(f"the connection {name!r} has no `endpoint` config: re-run `python -m deployment.deploy`")
    if not key:
        raise ValueError(f"the connection {name!r} has no `key` secret: re-run `python -m deployment.deploy`")
    request_format = configs.get("request_format") or "contract"
    if request_format not in REQUEST_FORMATS:
        raise ValueError(
            f"the connection {name!r} has request_format={request_format!r}; use one of {', '.join(REQUEST_FORMATS)}"
        )
    api = configs.get("api") or None
    if api is not None and api not in APIS:
        raise ValueError(
            f"the connection {name!r} has api={api!r}; use {' or '.join(APIS)}, or remove it for a /score endpoint"
        )
    options: Dict[str, Any] = {}
    for field, cast in _NUMBERS.items():
        if configs.get(field) not in (None, ""):
            options[field] = _number(name, field, configs[field], cast)
    params = {
        field: _number(name, field, configs[field], cast)
        for field, cast in _PARAMS.items()
        if configs.get(field) not in (None, "")
    }
    client = PhiClient(
        endpoint,
        key,
        deployment=configs.get("deployment") or None,
        request_format=request_format,
        system_prompt=configs.get("system_prompt") or None,
        api=api,
        **options,
    )
    return client, params


def _number(name: str, field: str, value: Any, cast: type) -> Any:
    try:
        return cast(value)
    except (TypeError, ValueError):
        raise ValueError(f"the connection {name!r} has {field}={value!r}, which is not a number") from None
