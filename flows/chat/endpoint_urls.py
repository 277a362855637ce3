"""Which URL an endpoint is called at: the one home of the rules, shipped with the flow.

An endpoint has a scoring URL (`https://<name>.<region>.inference.ml.azure.com/score`, or a local
`http://127.0.0.1:<port>/score`): the tutorials' `/score` dialects are posted there. This project's
server also speaks the OpenAI API under its base URL (the scoring URL without `/score`):
`{base}/v1/chat/completions`. A connection with `api: openai` holds the base URL; one without it,
the scoring URL (docs/ARCHITECTURE.md section 6).

The deploy (deployment/connection.py's connection model) and the flow's client
(flows/chat/phi_client.py) both read these rules here. Standard library only: this folder is
uploaded to Azure AI Foundry as is.
"""
from __future__ import annotations

from urllib.parse import urlparse

SCORE_PATH = "/score"
OPENAI_VERSION_PATH = "/v1"
OPENAI_CHAT_PATH = OPENAI_VERSION_PATH + "/chat/completions"


def check_http_url(url: str) -> str:
    """`url` itself when it is an absolute http(s) URL; ValueError otherwise."""
    parsed = urlparse(url or "")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"the endpoint must be an http(s) URL, got {url!r}")
    return url


def base_url(scoring_url: str) -> str:
    """`http://host:port/score` -> `http://host:port`: the base URL the OpenAI API hangs off."""
    return scoring_url.rstrip("/").removesuffix(SCORE_PATH)


def openai_chat_url(endpoint: str) -> str:
    """`{base}/v1/chat/completions` from a server's base URL (an OpenAI-style `.../v1` base works too).

    A scoring URL is refused with the base URL to use instead: with `api: openai` the connection
    holds the base URL.
    """
    base = endpoint.rstrip("/").removesuffix(OPENAI_VERSION_PATH)
    if base.endswith(SCORE_PATH):
        raise ValueError(
            f"with api='openai' the endpoint is the server's base URL, not its scoring URL: got {endpoint!r}; "
            f"use {base_url(base)!r}"
        )
    return base + OPENAI_CHAT_PATH


def models_url(endpoint: str) -> str:
    """`GET {base}/v1/models`: answers 200 on a server that speaks the OpenAI API (docs/ARCHITECTURE.md section 5)."""
    return base_url(endpoint) + OPENAI_VERSION_PATH + "/models"
