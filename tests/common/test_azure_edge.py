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
