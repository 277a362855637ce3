"""Which URL an endpoint is called at: the one home of the rules, shipped with the flow.

An endpoint has a scoring URL (`https://<name>.<region>.inference.ml.azure.com/score`, or a local
`http://127.0.0.1:<port>/score`): the tutorials' `/score` dialects are posted there. This project's
server also speaks the OpenAI API: `{base}/v1/chat/completions`, where `base` is the URL under which
the routes answer, the host (the scoring URL without `/score`) or, on an Azure ML endpoint that
forwards only paths after the scoring route, the scoring URL itself; deploy asks which
(deployment/endpoint_probe.py). A connection with `api: openai` holds that base; one without it,
the scoring URL (docs/ARCHITECTURE.md section 6).

The deploy (deployment/connection.py's connection model) and the flow's client
(flows/chat/phi_client.py) both read these rules here. Standard library only: this folder is
uploaded to Azure AI Foundry as is.
"""
from __future__ import annotations

from urllib.parse import urlparse

OPENAI_VERSION_PATH = "/v1"
OPENAI_CHAT_PATH = OPENAI_VERSION_PATH + "/chat/completions"


def check_http_url(url: str) -> str:
    """`url` itself when it is an absolute http(s) URL; ValueError otherwise."""
    parsed = urlparse(url or "")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"the endpoint must be an http(s) URL, got {url!r}")
    return url


def openai_chat_url(endpoint: str) -> str:
    """`{endpoint}/v1/chat/completions`: `endpoint` is the URL the OpenAI routes hang off, the host
    (`https://HOST`) or, on an endpoint that forwards paths only after its scoring route, the scoring
    URL itself (`https://HOST/score`); deploy probes which (deployment/endpoint_probe.py). An
    OpenAI-style `.../v1` base works too."""
    return endpoint.rstrip("/").removesuffix(OPENAI_VERSION_PATH) + OPENAI_CHAT_PATH


def host_url(url: str) -> str:
    """`https://HOST/score` -> `https://HOST`: scheme and authority only."""
    parsed = urlparse(check_http_url(url))
    return f"{parsed.scheme}://{parsed.netloc}"


def openai_bases(scoring_url: str) -> tuple[str, ...]:
    """Where the OpenAI routes may hang off, in the order deploy asks: the host, then the scoring URL itself."""
    host, scoring = host_url(scoring_url), scoring_url.rstrip("/")
    return (host,) if scoring == host else (host, scoring)


def models_url(endpoint: str) -> str:
    """`GET {endpoint}/v1/models`: answers 200 with the model list where the OpenAI API hangs off `endpoint`
    (docs/ARCHITECTURE.md section 5)."""
    return endpoint.rstrip("/").removesuffix(OPENAI_VERSION_PATH) + OPENAI_VERSION_PATH + "/models"
