"""Status codes as an Azure ML managed online endpoint sends them: the container's non-200 relayed as 424.

Microsoft's online-endpoint troubleshooting doc: any non-200 answer of the container reaches the
client as HTTP 424, with the container's own code in `ms-azureml-model-error-statuscode`. The fake
endpoint (a real HTTP server on 127.0.0.1) answers exactly that; the client must report the
original code and message, and retry what is worth retrying. The gate and deploy's smoke test use
this same client (deployment/scoring.client_on), so these hold for them too.
"""
from __future__ import annotations

import pytest

from deployment.connection import PhiConnection
from deployment.scoring import client_on
from flows.chat.phi_client import MODEL_STATUS_HEADER, EndpointError, PhiClient

from fake_endpoint import ANSWER, KEY, OPENAI_PATH, Reply, openai_completion, openai_error

CONTEXT_CAP = "the prompt is 5012 tokens; this server's context cap is 4096"


def relayed(status: int, body: object, **headers: str) -> Reply:
    """What the endpoint sends when the container answered `status` with `body`."""
    return Reply(424, body, headers={MODEL_STATUS_HEADER: str(status), **headers})


@pytest.fixture(params=["openai", "score"])
def client(request, fake):
    sleeps: list[float] = []
    if request.param == "openai":
        made = PhiClient(fake.base_url, KEY, api="openai", sleep=sleeps.append, backoff=0.5)
    else:
        made = PhiClient(fake.url, KEY, sleep=sleeps.append, backoff=0.5)
    made.sleeps = sleeps  # type: ignore[attr-defined]
    return made


def test_a_container_400_reaches_the_user_as_that_400_and_its_message(fake, client) -> None:
    fake.queue(relayed(400, openai_error(CONTEXT_CAP)))
    with pytest.raises(EndpointError) as info:
        client.chat("hi")
    message = str(info.value)
    assert info.value.status == 400 and info.value.relayed_as == 424
    assert "rejected the request (HTTP 400 from the container, relayed by Azure ML as HTTP 424)" in message
    assert CONTEXT_CAP in message and "unhealthy" not in message
    assert len(fake.requests) == 1  # a bad request is not retried


def test_a_relayed_503_is_retried_with_backoff_when_retry_after_was_lost(fake, client) -> None:
    fake.queue(relayed(503, openai_error("queue full")), relayed(503, openai_error("queue full")))
    assert client.chat("hi").text == ANSWER
    assert len(fake.requests) == 3
    assert len(client.sleeps) == 2 and 0.5 <= client.sleeps[0] <= 0.56 and 1.0 <= client.sleeps[1] <= 1.11


def test_a_relayed_503_is_reported_after_the_retries(fake) -> None:
    fake.default = relayed(503, openai_error("queue full"))
    sleeps: list[float] = []
    with pytest.raises(EndpointError) as info:
        PhiClient(fake.base_url, KEY, api="openai", sleep=sleeps.append, max_retries=2).chat("hi")
    assert info.value.status == 503 and info.value.relayed_as == 424
    assert "unhealthy (HTTP 503 from the container, relayed by Azure ML as HTTP 424 after 3 attempt(s))" in str(info.value)
    assert "queue full" in str(info.value) and len(fake.requests) == 3 and len(sleeps) == 2


def test_a_relayed_429_keeps_a_retry_after_that_survived(fake, client) -> None:
    fake.queue(relayed(429, openai_error("slow down"), **{"Retry-After": "4"}))
    assert client.chat("hi").text == ANSWER
    assert client.sleeps == [4.0]


def test_the_endpoints_own_429_names_its_admission_bound(fake) -> None:
    fake.default = Reply(429, {"message": "Too many requests"})
    with pytest.raises(EndpointError) as info:
        PhiClient(fake.base_url, KEY, api="openai", sleep=lambda s: None, max_retries=1).chat("hi")
    assert info.value.status == 429 and info.value.relayed_as is None
    assert "2 x max_concurrent_requests_per_instance x instances" in str(info.value)


def test_a_424_without_the_header_is_the_unhealthy_deployment_it_always_was(fake, client) -> None:
    fake.queue(Reply(424, {"message": "model crashed"}))
    with pytest.raises(EndpointError) as info:
        client.chat("hi")
    assert info.value.status == 424 and info.value.relayed_as is None
    assert "unhealthy (HTTP 424)" in str(info.value) and "model crashed" in str(info.value)


def test_a_relayed_404_says_the_deployment_lacks_the_route_not_that_the_endpoint_is_gone(fake) -> None:
    fake.queue(relayed(404, openai_error("model 'x' is not served here")))
    with pytest.raises(EndpointError) as info:
        PhiClient(fake.base_url, KEY, api="openai").chat("hi")
    assert info.value.status == 404 and "no such route or model" in str(info.value)
    assert "was deleted" not in str(info.value)


def test_the_gate_and_smoke_client_reads_the_relay_too(fake) -> None:
    """deployment.scoring.client_on builds the gate's and deploy's smoke test's client: this same class."""
    client = client_on(PhiConnection(fake.base_url, KEY, "green", api="openai"))
    assert isinstance(client, PhiClient)
    fake.queue(relayed(400, openai_error(CONTEXT_CAP)), relayed(503, openai_error("busy")), Reply(body=openai_completion()))
    with pytest.raises(EndpointError, match="HTTP 400 from the container"):
        client.chat("hi")
    client._sleep = lambda seconds: None  # the one seam: no real backoff in a test
    assert client.chat("hi").text == ANSWER
    assert [r.path for r in fake.requests] == [OPENAI_PATH] * 3
    assert all(r.headers["azureml-model-deployment"] == "green" for r in fake.requests)
