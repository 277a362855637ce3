"""A stand-in for the managed-identity token service of an Azure ML online deployment (a real HTTP server).

Azure ML sets MSI_ENDPOINT and MSI_SECRET in the container (azureml-examples
cli/endpoints/online/model-1/onlinescoring/score_managedidentity.py reads them); azure-identity's
ManagedIdentityCredential then asks `GET $MSI_ENDPOINT?api-version=2017-09-01&resource=R&clientid=ID`
with the header `secret: $MSI_SECRET` (azure/identity/_credentials/azure_ml.py). This server answers that
protocol and nothing else: a wrong secret, API version or client id gets the error the platform would.

Its tokens are JWTs with the claims Azurite's `--oauth basic` checks (issuer, audience, nbf/exp/iat; not
the signature), for the audience asked for, so the storage emulator decides, as Azure Storage would,
whether a token opens a blob.
"""
from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from fakes.json_http import JsonHandler, LocalHTTPServer

SECRET = "msi-secret-0123456789-SECRET"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
API_VERSION = "2017-09-01"


def _b64(payload: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()


def jwt(audience: str, lifetime_s: int = 3600, issuer: str = f"https://sts.windows.net/{TENANT}/") -> str:
    """An unsigned-in-spirit JWT (the signature is filler; Azurite's basic OAuth does not check it)."""
    now = int(time.time())
    claims = {"aud": audience, "iss": issuer, "iat": now - 60, "nbf": now - 60, "exp": now + lifetime_s,
              "tid": TENANT, "oid": "00000000-0000-0000-0000-0000000000e1"}
    return f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64(claims)}.c2lnbmF0dXJl"


@dataclass
class ManagedIdentityEndpoint:
    """Serves tokens for `client_id` only; `audience` overrides the token's audience (to show a wrong one fails)."""

    client_id: str
    audience: str | None = None
    requests: list[dict] = field(default_factory=list)

    def start(self) -> "ManagedIdentityEndpoint":
        self._server = LocalHTTPServer(("127.0.0.1", 0), _handler(self))
        threading.Thread(target=self._server.serve_forever, name="msi-endpoint", daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/msi/token"

    def env(self) -> dict[str, str]:
        """What Azure ML puts in the container's environment."""
        return {"MSI_ENDPOINT": self.url, "MSI_SECRET": SECRET}

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, query: dict[str, str], secret: str | None) -> tuple[int, dict]:
        self.requests.append({"query": query, "secret_ok": secret == SECRET})
        if secret != SECRET:
            return 401, {"error": "invalid_request", "error_description": "missing or wrong secret header"}
        if query.get("api-version") != API_VERSION or not query.get("resource"):
            return 400, {"error": "invalid_request", "error_description": "api-version and resource are required"}
        if query.get("clientid") != self.client_id:
            return 400, {"error": "invalid_request",
                         "error_description": f"identity {query.get('clientid')!r} is not assigned to this deployment"}
        resource = query["resource"]
        token = jwt(self.audience or resource.rstrip("/"))
        return 200, {"access_token": token, "expires_on": str(int(time.time()) + 3600), "resource": resource,
                     "token_type": "Bearer", "client_id": self.client_id}


def _handler(endpoint: ManagedIdentityEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urllib.parse.urlsplit(self.path)
            if url.path != "/msi/token":
                status, body = 404, {"error": "not_found"}
            else:
                query = dict(urllib.parse.parse_qsl(url.query))
                status, body = endpoint.answer(query, self.headers.get("secret"))
            self._send(status, body)

    return Handler
