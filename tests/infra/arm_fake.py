"""A fake ARM at the HTTP edge: an azure-core transport that answers the permissions API.

The answers have the documented shape of `Permissions - List For Resource Group` /
`List For Resource` (api-version 2022-04-01): `{"value": [{"actions": [...], "notActions": [...],
"dataActions": [...], "notDataActions": [...]}], "nextLink": ...}`, one block per role that applies;
errors use ARM's `{"error": {"code", "message"}}` body. Everything above the transport (the ARM
pipeline, its retry and bearer-token policies, paging) is the real azure-core / azure-mgmt-core code.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable
from urllib.parse import urlparse

from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._http_response_impl import HttpResponseImpl

from infra.permissions import Permission

SUFFIX = "/providers/Microsoft.Authorization/permissions"


def block(permission: Permission) -> dict[str, list[str]]:
    """A Permission as ARM writes it."""
    return {"actions": list(permission.actions), "notActions": list(permission.not_actions),
            "dataActions": list(permission.data_actions), "notDataActions": list(permission.not_data_actions)}


class FakeResponse(HttpResponseImpl):
    """A complete (already read) azure.core.rest response, as a transport hands it to the pipeline."""

    def __init__(self, request: Any, status: int, body: Any) -> None:
        super().__init__(
            request=request, internal_response=None, status_code=status,
            reason={200: "OK", 403: "Forbidden", 404: "Not Found", 503: "Service Unavailable"}.get(status, ""),
            content_type="application/json; charset=utf-8",
            headers={"Content-Type": "application/json; charset=utf-8"}, stream_download_generator=None,
        )
        self._content = json.dumps(body).encode()
        self._is_stream_consumed = True


class FakeArm(HttpTransport):
    """Answers GET {scope}/providers/Microsoft.Authorization/permissions from `scopes` (scope -> answers).

    An answer is a list of Permission (one page), a list of lists (pages, chained by nextLink), an
    int status with ARM's error body, or a callable. A scope with a queue of answers pops one per call.
    """

    def __init__(self, scopes: dict[str, Any]) -> None:
        self.scopes = {scope.lower(): answer for scope, answer in scopes.items()}
        self.requests: list[Any] = []

    def send(self, request: Any, **kwargs: Any) -> FakeResponse:
        self.requests.append(request)
        url = urlparse(request.url)
        assert url.scheme == "https" and url.netloc == "management.azure.com", request.url
        assert request.method == "GET"
        assert "api-version=2022-04-01" in url.query, request.url
        assert request.headers.get("Authorization") == "Bearer fake-token", "no bearer token sent"
        assert url.path.endswith(SUFFIX), url.path
        scope = url.path[: -len(SUFFIX)].lower()
        page = int(dict(p.split("=") for p in url.query.split("&")).get("page", "0"))
        answer = self.scopes.get(scope, 404)
        if isinstance(answer, tuple):  # a queue: one answer per call
            answer, rest = answer[0], answer[1:]
            self.scopes[scope] = rest if len(rest) > 1 else rest[0]
        if callable(answer):
            answer = answer()
        if isinstance(answer, int):
            code = {403: "AuthorizationFailed", 404: "ResourceNotFound", 503: "ServiceUnavailable"}.get(answer, "Error")
            return FakeResponse(request, answer, {"error": {"code": code, "message": f"fake {code} for {scope}"}})
        pages = answer if answer and isinstance(answer[0], list) else [answer]
        body: dict[str, Any] = {"value": [block(p) for p in pages[page]]}
        if page + 1 < len(pages):
            body["nextLink"] = f"https://management.azure.com{url.path}?api-version=2022-04-01&page={page + 1}"
        return FakeResponse(request, 200, body)

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "FakeArm":
        return self

    def __exit__(self, *args: Any) -> None:
        pass


class FakeCredential:
    """What azure-identity's credentials offer: get_token for the ARM scope."""

    def __init__(self, fail: Callable[[], Exception] | None = None) -> None:
        self.fail = fail
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        if self.fail:
            raise self.fail()
        return AccessToken("fake-token", int(time.time()) + 3600)
