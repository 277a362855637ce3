"""The CI credential: every Azure token exchange carries a GitHub ID token fetched for it.

GitHub's token service is a real HTTP server on loopback, speaking the protocol of
ACTIONS_ID_TOKEN_REQUEST_URL (GET with `audience`, bearer ACTIONS_ID_TOKEN_REQUEST_TOKEN, answer
`{"value": JWT}`). Like the real one, it makes each ID token expire: Entra ID (a fake at
azure-core's transport edge, behind the real ClientAssertionCredential and its token cache)
refuses any assertion but the newest, as it refuses a GitHub token past its 5 minutes
(AADSTS700024). So a credential that reused its first assertion would fail the second exchange.
"""
from __future__ import annotations

import json
import threading
from typing import Any, Iterator
from urllib.parse import parse_qs, urlparse

import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._http_response_impl import HttpResponseImpl

from common import github_oidc
from common.azure import azure_credential, make_ml_client
from common.cli import UserError
from fakes.json_http import JsonHandler, LocalHTTPServer

REQUEST_TOKEN = "gh-request-token-not-to-be-shown"
TENANT = "99999999-8888-7777-6666-555555555555"
CLIENT = "aaaaaaaa-0000-0000-0000-0000000000c1"
ARM = "https://management.azure.com/.default"
AML = "https://ml.azure.com/.default"


class TokenService:
    """GitHub's OIDC token service on 127.0.0.1: a new ID token per request, each one numbered."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.issued: list[str] = []
        self.requests: list[dict[str, Any]] = []
        service = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                url = urlparse(self.path)
                service.requests.append({"path": url.path, "query": parse_qs(url.query),
                                         "authorization": self.headers.get("Authorization")})
                if service.status != 200 or self.headers.get("Authorization") != f"Bearer {REQUEST_TOKEN}":
                    self._send(service.status if service.status != 200 else 401, {"message": "Unauthorized"})
                    return
                token = f"github-id-token-{len(service.issued) + 1}"
                service.issued.append(token)
                self._send(200, {"count": len(token), "value": token})

        self.server = LocalHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def request_url(self) -> str:
        """As GitHub sets it: the api-version is already in the query."""
        return f"http://127.0.0.1:{self.server.server_port}/_apis/distributedtask/hubs/Actions/token?api-version=2.0"

    def env(self) -> dict[str, str]:
        return {github_oidc.REQUEST_URL: self.request_url, github_oidc.REQUEST_TOKEN: REQUEST_TOKEN,
                github_oidc.CLIENT_ID: CLIENT}


@pytest.fixture
def service() -> Iterator[TokenService]:
    running = TokenService()
    running.thread.start()
    yield running
    running.server.shutdown()
    running.server.server_close()


class Response(HttpResponseImpl):
    def __init__(self, request: Any, status: int, body: dict) -> None:
        super().__init__(request=request, internal_response=None, status_code=status, reason="",
                         content_type="application/json", headers={"Content-Type": "application/json"},
                         stream_download_generator=None)
        self._content = json.dumps(body).encode()
        self._is_stream_consumed = self._is_closed = True  # already read, nothing to close


def _form(request: Any) -> dict[str, str]:
    """The token request's form fields (azure-core keeps a form body as a dict until it is sent)."""
    body = request.body
    if isinstance(body, dict):
        return {key: str(value) for key, value in body.items()}
    text = body.decode() if isinstance(body, bytes) else body
    return {key: values[0] for key, values in parse_qs(text).items()}


class FakeEntra(HttpTransport):
    """Entra ID's token endpoint: accepts only the newest GitHub ID token as the client assertion."""

    def __init__(self, service: TokenService, expires_in: int = 3600) -> None:
        self.service = service
        self.expires_in = expires_in
        self.exchanges: list[dict[str, str]] = []

    def send(self, request: Any, **kwargs: Any) -> Response:
        url = urlparse(request.url)
        assert (url.netloc, url.path) == ("login.microsoftonline.com", f"/{TENANT}/oauth2/v2.0/token"), request.url
        form = _form(request)
        self.exchanges.append(form)
        assert form["client_id"] == CLIENT and form["grant_type"] == "client_credentials"
        assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        if form["client_assertion"] != self.service.issued[-1]:
            return Response(request, 400, {"error": "invalid_client", "error_description":
                                           "AADSTS700024: Client assertion is not within its valid time range."})
        return Response(request, 200, {"token_type": "Bearer", "expires_in": self.expires_in,
                                       "access_token": f"entra-token-{len(self.exchanges)}"})

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __exit__(self, *args: Any) -> None:
        pass


def test_the_callback_fetches_a_new_id_token_on_every_call(service: TokenService) -> None:
    fetch = github_oidc.id_token_callback(service.request_url, REQUEST_TOKEN)
    assert [fetch(), fetch(), fetch()] == ["github-id-token-1", "github-id-token-2", "github-id-token-3"]
    assert len(service.requests) == 3
    for request in service.requests:
        assert request["authorization"] == f"Bearer {REQUEST_TOKEN}"
        assert request["query"] == {"api-version": ["2.0"], "audience": ["api://AzureADTokenExchange"]}


def test_each_token_request_exchanges_a_fresh_assertion(service: TokenService) -> None:
    entra = FakeEntra(service, expires_in=3600)
    credential = azure_credential(TENANT, service.env(), transport=entra)
    assert type(credential).__name__ == "ClientAssertionCredential"
    assert service.requests == []  # constructing it asks no one

    first = credential.get_token(ARM)
    second = credential.get_token(AML)  # another scope: a new exchange, with a new GitHub token
    assert (first.token, second.token) == ("entra-token-1", "entra-token-2")
    assert [e["client_assertion"] for e in entra.exchanges] == ["github-id-token-1", "github-id-token-2"]
    assert [e["scope"] for e in entra.exchanges] == [ARM, AML]

    assert credential.get_token(ARM).token == "entra-token-1"  # a valid cached token needs no exchange
    assert len(service.issued) == 2


def test_an_expired_token_is_renewed_with_a_new_assertion(service: TokenService) -> None:
    """Renewing the ARM token after its hour is what `azure/login` cannot do; here it is a new exchange."""
    entra = FakeEntra(service, expires_in=0)  # each token has run out by the next call
    credential = azure_credential(TENANT, service.env(), transport=entra)
    tokens = [credential.get_token(ARM).token for _ in range(3)]
    assert tokens == ["entra-token-1", "entra-token-2", "entra-token-3"]
    assert [e["client_assertion"] for e in entra.exchanges] == service.issued == [
        "github-id-token-1", "github-id-token-2", "github-id-token-3"]


def test_the_tenant_comes_from_the_stack_else_the_environment(service: TokenService) -> None:
    entra = FakeEntra(service)
    credential = azure_credential("", {**service.env(), "AZURE_TENANT_ID": TENANT}, transport=entra)
    assert credential.get_token(ARM).token == "entra-token-1"


@pytest.mark.parametrize("drop", [github_oidc.REQUEST_URL, github_oidc.CLIENT_ID])
def test_outside_github_actions_it_is_the_default_credential(service: TokenService, drop: str) -> None:
    env = {key: value for key, value in service.env().items() if key != drop}
    assert type(azure_credential(TENANT, env)).__name__ == "DefaultAzureCredential"


def test_a_job_without_id_token_write_gets_one_clear_message(service: TokenService) -> None:
    env = {key: value for key, value in service.env().items() if key != github_oidc.REQUEST_TOKEN}
    with pytest.raises(UserError, match=r"ACTIONS_ID_TOKEN_REQUEST_TOKEN.*id-token: write"):
        azure_credential(TENANT, env)
    with pytest.raises(UserError, match="a tenant id"):
        azure_credential("", service.env())


def test_a_refusal_names_the_permission_and_never_the_request_token(service: TokenService) -> None:
    service.status = 403
    fetch = github_oidc.id_token_callback(service.request_url, REQUEST_TOKEN)
    with pytest.raises(ClientAuthenticationError) as failure:
        fetch()
    assert "answered 403" in str(failure.value) and "id-token: write" in str(failure.value)
    assert REQUEST_TOKEN not in str(failure.value)
    assert len(service.requests) == 1  # a 403 is an answer, not a transient failure


def test_make_ml_client_and_the_preflight_use_it_in_github_actions(service: TokenService, monkeypatch, repo_root) -> None:
    from infra.outputs import StackOutputs
    from infra.preflight import default_credential

    outputs = StackOutputs.from_mapping(json.loads((repo_root / "docs/examples/stack-outputs.json").read_text()))
    for key, value in service.env().items():
        monkeypatch.setenv(key, value)
    assert type(make_ml_client(outputs)._credential).__name__ == "ClientAssertionCredential"
    assert type(default_credential(outputs)).__name__ == "ClientAssertionCredential"
    assert service.requests == []  # no token is fetched before a client needs one


def test_the_audience_is_added_once() -> None:
    url = github_oidc.token_url("https://example.test/token?api-version=2.0&audience=old")
    assert parse_qs(urlparse(url).query) == {"api-version": ["2.0"], "audience": ["api://AzureADTokenExchange"]}
