"""GitHub Actions' OIDC ID token as the assertion of an Azure sign-in, fetched fresh for every exchange.

A GitHub ID token lasts 5 minutes; the ARM token `azure/login` leaves lasts about an hour and cannot
be renewed once the ID token has expired (Azure/azure-cli#28708), so a long deploy or log stream
would end "not signed in". azure-identity's `ClientAssertionCredential` calls its callback each time
it asks Entra ID for a token: the callback here asks GitHub's token service for a new ID token
then, so the credential renews itself for as long as the job runs.

GitHub sets ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN in jobs with
`permissions: id-token: write`; the service answers `GET <url>&audience=<aud>` (bearer: the request
token) with `{"value": "<JWT>"}`. The request token is a secret: it never appears in a message.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

AUDIENCE = "api://AzureADTokenExchange"
"""The audience Azure's federated identity credentials expect (and infra/github.py trusts)."""
REQUEST_URL = "ACTIONS_ID_TOKEN_REQUEST_URL"
REQUEST_TOKEN = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"
CLIENT_ID = "AZURE_CLIENT_ID"


def in_github_actions(env: Mapping[str, str]) -> bool:
    """A GitHub job that may request ID tokens and names the Azure identity to sign in as."""
    return bool(env.get(REQUEST_URL) and env.get(CLIENT_ID))


def token_url(request_url: str, audience: str = AUDIENCE) -> str:
    """The request URL (it already carries `api-version`) with the audience added or replaced."""
    parts = urlsplit(request_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "audience"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("audience", audience)])))


def id_token_callback(request_url: str, request_token: str, *, audience: str = AUDIENCE,
                      transport: Any = None, retry: Mapping[str, Any] | None = None) -> Callable[[], str]:
    """A callable that returns a new GitHub ID token on every call (azure-core's retries, set by `retry`
    as common.azure.RETRY does for every client, and transport)."""
    from azure.core import PipelineClient
    from azure.core.pipeline import policies

    url = token_url(request_url, audience)
    client = PipelineClient(
        url,
        policies=[
            policies.HeadersPolicy({"Accept": "application/json", "Authorization": f"Bearer {request_token}"}),
            policies.UserAgentPolicy(sdk_moniker="finetune-phi-github-oidc"),
            policies.RetryPolicy(**(retry or {})),
            policies.HttpLoggingPolicy(),  # logs no Authorization header (azure-core redacts it)
        ],
        transport=transport,
    )

    def fetch() -> str:
        from azure.core.exceptions import ClientAuthenticationError
        from azure.core.rest import HttpRequest

        response = client.send_request(HttpRequest("GET", url))
        if response.status_code != 200:
            raise ClientAuthenticationError(
                f"GitHub's OIDC token service answered {response.status_code}: the job needs "
                "`permissions: id-token: write` (and, for this repository's federated credential, `environment: azure`)."
            )
        try:
            value = response.json().get("value")
        except (ValueError, AttributeError):
            value = None
        if not isinstance(value, str) or not value:
            raise ClientAuthenticationError("GitHub's OIDC token service answered without a token (no `value`).")
        return value

    return fetch


def github_actions_credential(tenant_id: str, env: Mapping[str, str], *, retry: Mapping[str, Any] | None = None,
                              **kwargs: Any) -> Any:
    """ClientAssertionCredential as AZURE_CLIENT_ID, with a fresh GitHub ID token per exchange."""
    from azure.identity import ClientAssertionCredential

    from common.cli import UserError

    tenant = tenant_id or env.get("AZURE_TENANT_ID", "")
    missing = [name for name, value in ((REQUEST_TOKEN, env.get(REQUEST_TOKEN)), ("a tenant id", tenant)) if not value]
    if missing:
        raise UserError(
            f"signing in as GitHub's OIDC identity ({CLIENT_ID} and {REQUEST_URL} are set) needs {' and '.join(missing)}: "
            "give the job `permissions: id-token: write` and set AZURE_TENANT_ID (or the stack's tenant_id output)."
        )
    callback = id_token_callback(env[REQUEST_URL], env[REQUEST_TOKEN], transport=kwargs.pop("token_transport", None),
                                 retry=retry)
    return ClientAssertionCredential(tenant, env[CLIENT_ID], callback, **kwargs)
