"""common.azure: the SDK's expected failures become one actionable message; transient ones are retried."""
from __future__ import annotations

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from common.azure import azure_errors, with_retries
from common.cli import UserError


def _http(status: int) -> HttpResponseError:
    err = HttpResponseError(message=f"status {status}")
    err.status_code = status
    return err


@pytest.mark.parametrize("error, expected", [
    (ClientAuthenticationError("no token"), "az login"),
    (ResourceNotFoundError("workspace ws"), "not found (workspace ws)"),
    (ServiceRequestError("name resolution failed"), "cannot reach Azure"),
    (ServiceResponseError("connection reset by peer"), "connection to Azure broke"),
    (_http(403), "permission denied (403)"),
    (_http(409), "Azure answered 409"),
])
def test_expected_failures_become_one_message(error: Exception, expected: str) -> None:
    with pytest.raises(UserError) as failure:
        with azure_errors("reading the workspace"):
            raise error
    message = str(failure.value)
    assert message.startswith("reading the workspace: ") and expected in message
    assert "\n" not in message and failure.value.__suppress_context__  # one line, no chained traceback


def test_unexpected_errors_are_not_disguised() -> None:
    with pytest.raises(KeyError):
        with azure_errors("anything"):
            raise KeyError("a bug")


def test_transient_errors_are_retried_then_raised() -> None:
    delays: list[float] = []
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ServiceResponseError("reset")
        return "ok"

    assert with_retries(flaky, action="listing jobs", sleep=delays.append) == "ok"
    assert calls["n"] == 3 and len(delays) == 2 and delays[1] > delays[0] * 0.5

    def always_503() -> None:
        raise _http(503)

    with pytest.raises(HttpResponseError):
        with_retries(always_503, action="x", attempts=3, sleep=delays.append)

    def forbidden() -> None:
        calls["n"] += 1
        raise _http(403)

    calls["n"] = 0
    with pytest.raises(HttpResponseError):
        with_retries(forbidden, action="x", sleep=delays.append)
    assert calls["n"] == 1  # a 403 is not transient: no retry


def _arm_error(status: int, code: str, message: str) -> HttpResponseError:
    """An HttpResponseError built the way azure-core builds it from ARM's `{"error": {code, message}}` body."""
    import json

    from azure.core.rest import HttpRequest
    from azure.core.rest._http_response_impl import HttpResponseImpl

    response = HttpResponseImpl(
        request=HttpRequest("PUT", "https://management.azure.com/x"), internal_response=None, status_code=status,
        reason="Forbidden", content_type="application/json", headers={"Content-Type": "application/json"},
        stream_download_generator=None,
    )
    response._content = json.dumps({"error": {"code": code, "message": message}}).encode()
    response._is_stream_consumed = True
    return HttpResponseError(response=response)


def test_a_403_names_every_role_not_data_scientist_alone() -> None:
    with pytest.raises(UserError) as failure:
        with azure_errors("creating endpoint phi3-chat"):
            raise _arm_error(403, "AuthorizationFailed", "The client does not have authorization")
    message = str(failure.value)
    assert "AzureML Data Scientist (or Contributor) on the workspace" in message
    assert "Managed Identity Operator on the endpoint identity" in message
    assert "python -m infra.preflight" in message


def test_linked_authorization_failed_names_the_identity_right() -> None:
    error = _arm_error(403, "LinkedAuthorizationFailed",
                       "The client has permission to perform action 'Microsoft.MachineLearningServices/workspaces/"
                       "onlineEndpoints/write' on scope 'x'; however, it does not have permission to perform action(s) "
                       "'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action' on the linked scope(s) 'y'")
    assert error.error.code == "LinkedAuthorizationFailed"  # what azure-core parses from ARM's body
    with pytest.raises(UserError) as failure:
        with azure_errors("creating endpoint phi3-chat"):
            raise error
    message = str(failure.value)
    assert message.startswith("creating endpoint phi3-chat: permission denied (LinkedAuthorizationFailed)")
    assert "userAssignedIdentities/assign/action" in message and "Managed Identity Operator" in message
