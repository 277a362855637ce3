"""Where does an endpoint's OpenAI API answer? Asked once, before the smoke test, instead of assumed.

Every OpenAI client (the flow, the gate, the smoke test, Foundry agents) calls `{base}/v1/...`, and an
Azure ML managed online endpoint's scoring route is `/score`. Microsoft's samples show paths reaching
custom containers both after the host (Triton's `/v2/...`) and after `/score`
(Azure/azure-sdk-for-python#39025), but no doc states the rule for custom containers. So deploy asks:

1. `GET {host}/v1/models`: the routes hang off the host; the connection's `endpoint` is `https://HOST`.
2. `GET {scoring_uri}/v1/models`: they hang off the scoring route; `endpoint` is `https://HOST/score`.
3. Neither: the `/score` dialect (the tutorials' request shapes, which the server also answers), and
   one line that says so and what each URL answered (docs/DEPLOY.md, "Reading the /v1 probe").

A base "answers" when `/v1/models` returns 200 with the OpenAI list shape (`{"data": [...]}`). The
key goes only in the bearer header; `deployment` pins the new deployment (`azureml-model-deployment`),
so the probe reaches it before it takes traffic. Standard library + requests: no SDK import.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flows.chat.endpoint_urls import models_url, openai_bases  # the URL rules, shipped with the flow

TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ProbeResult:
    """What the connection and the clients use: `endpoint` with `api`, and what each URL answered."""

    endpoint: str
    """The URL under which `/v1/chat/completions` answers (api "openai"), else the scoring URI (api None)."""
    api: str | None
    tried: tuple[tuple[str, str], ...]
    """(URL, what it answered) for each URL asked, in order."""

    @property
    def fell_back(self) -> bool:
        return self.api is None

    def line(self) -> str:
        """One line for the deploy log: where the OpenAI API answers, or that deploy fell back to /score."""
        if not self.fell_back:
            return f"the OpenAI API answers under {self.endpoint} (GET {models_url(self.endpoint)}: 200)"
        seen = "; ".join(f"{url}: {outcome}" for url, outcome in self.tried)
        return (f"falling back to the /score dialect: no /v1 route answered ({seen}); the connection calls "
                f"{self.endpoint} with the tutorials' request shape (docs/DEPLOY.md, \"Reading the /v1 probe\")")


def probe(scoring_uri: str, key: str | None = None, deployment: str | None = None, *,
          timeout: float = TIMEOUT_S, session: Any = None) -> ProbeResult:
    """Try each candidate base's `GET /v1/models`; the first that answers wins, else the /score fallback."""
    import requests

    http = session or requests.Session()
    headers = {"Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if deployment:
        headers["azureml-model-deployment"] = deployment
    tried: list[tuple[str, str]] = []
    for base in openai_bases(scoring_uri):
        url = models_url(base)
        outcome = _ask(http, url, headers, timeout, key)
        if outcome is None:
            return ProbeResult(base, "openai", tuple(tried + [(url, "200")]))
        tried.append((url, outcome))
    return ProbeResult(scoring_uri, None, tuple(tried))


def _ask(http: Any, url: str, headers: dict[str, str], timeout: float, key: str | None) -> str | None:
    """None when `url` answers as an OpenAI model list; else a short description of what came back."""
    import requests

    from flows.chat.phi_client import container_status

    try:
        response = http.get(url, headers=headers, timeout=timeout)
    except requests.exceptions.RequestException as err:
        text = f"no answer ({type(err).__name__})"
        return text.replace(key, "<hidden>") if key else text
    status = container_status(response.status_code, response.headers)
    if response.status_code != 200:
        relayed = f" from the container (relayed as {response.status_code})" if status != response.status_code else ""
        return f"HTTP {status}{relayed}"
    try:
        body = response.json()
    except ValueError:
        return "HTTP 200 but not JSON"
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return "HTTP 200 but not an OpenAI model list"
    return None
