"""The /v1 probe against a local HTTP stand-in of each forwarding rule an endpoint might have.

The stand-in (the deploy fixtures' ScoringServer, `routes` host | score | none) is a real HTTP server on
127.0.0.1; the probe's answer is then used by the project's own client (flows/chat/phi_client.py), so
"answers" means a chat works.
"""
from __future__ import annotations

import pytest

from deployment.endpoint_probe import ProbeResult, probe
from fakes.deploy_fixtures import SMOKE_REPLY as REPLY
from fakes.ml_client import SECRET_KEY as KEY
from flows.chat.endpoint_urls import host_url, openai_bases
from flows.chat.phi_client import PhiClient


def test_the_host_wins_when_v1_answers_there(scoring_server) -> None:
    result = probe(scoring_server.url, KEY, "green")
    assert (result.endpoint, result.api) == (scoring_server.host, "openai")
    assert scoring_server.probes == ["/v1/models"]
    assert PhiClient(result.endpoint, KEY, "green", api="openai").chat("hi").text == REPLY
    assert "answers under" in result.line() and not result.fell_back


def test_the_scoring_route_wins_when_only_paths_after_score_are_forwarded(scoring_server) -> None:
    scoring_server.routes = "score"
    result = probe(scoring_server.url, KEY, "green")
    assert (result.endpoint, result.api) == (scoring_server.url, "openai")
    assert scoring_server.probes == ["/v1/models", "/score/v1/models"]
    assert PhiClient(result.endpoint, KEY, "green", api="openai").chat("hi").text == REPLY
    assert scoring_server.requests[-1]["path"] == "/score/v1/chat/completions"
    assert result.tried[0][1] == "HTTP 404"


def test_neither_falls_back_to_the_score_dialect_and_says_so_in_one_line(scoring_server) -> None:
    scoring_server.routes = "none"
    result = probe(scoring_server.url, KEY, "green")
    assert (result.endpoint, result.api) == (scoring_server.url, None)
    assert PhiClient(result.endpoint, KEY, "green").chat("hi").text == REPLY  # the /score dialect works
    line = result.line()
    assert result.fell_back and "\n" not in line
    assert line.startswith("falling back to the /score dialect")
    assert f"{scoring_server.host}/v1/models: HTTP 404" in line and f"{scoring_server.url}/v1/models: HTTP 404" in line


def test_a_wrong_key_is_what_the_line_reports_and_never_the_key(scoring_server) -> None:
    result = probe(scoring_server.url, "wrong-" + KEY)
    assert result.fell_back and "HTTP 401" in result.line() and KEY not in result.line()


def test_nothing_listening_is_a_fallback_not_a_crash() -> None:
    result = probe("http://127.0.0.1:9/score", KEY, timeout=2.0)
    assert result.fell_back and "no answer (ConnectionError)" in result.line()


def test_a_relayed_status_is_read_behind_the_424() -> None:
    """A container that answers /v1/models with 503 (still loading) shows as 503 relayed, not as 424."""
    class Relaying:
        def get(self, url, headers, timeout):
            import requests

            response = requests.Response()
            response.status_code, response._content = 424, b"{}"
            response.headers["ms-azureml-model-error-statuscode"] = "503"
            return response

    result = probe("https://phi.eastus.inference.ml.azure.com/score", KEY, session=Relaying())
    assert result.tried[0][1] == "HTTP 503 from the container (relayed as 424)"


@pytest.mark.parametrize(
    ("scoring_uri", "expected"),
    [
        ("https://phi.eastus.inference.ml.azure.com/score",
         ("https://phi.eastus.inference.ml.azure.com", "https://phi.eastus.inference.ml.azure.com/score")),
        ("http://127.0.0.1:5001/score/", ("http://127.0.0.1:5001", "http://127.0.0.1:5001/score")),
        ("http://127.0.0.1:5001", ("http://127.0.0.1:5001",)),
    ],
)
def test_candidates_are_the_host_then_the_scoring_route(scoring_uri: str, expected: tuple[str, ...]) -> None:
    assert openai_bases(scoring_uri) == expected


def test_a_non_http_url_is_refused() -> None:
    with pytest.raises(ValueError, match="http\\(s\\) URL"):
        host_url("phi.eastus.inference.ml.azure.com/score")


def test_the_result_is_what_a_connection_needs() -> None:
    result = ProbeResult("https://h/score", "openai", (("https://h/v1/models", "HTTP 404"), ("https://h/score/v1/models", "200")))
    assert result.line() == "the OpenAI API answers under https://h/score (GET https://h/score/v1/models: 200)"
