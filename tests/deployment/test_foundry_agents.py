"""The Foundry agents `ModelGateway` connection: the documented body, built from azure-ai-ml's own entities.

The body is what the SDK sends (`WorkspaceConnection._to_rest_object`, the call inside
`MLClient.connections.create_or_update`), compared field by field with the documented one
(learn.microsoft.com/azure/foundry/agents/how-to/ai-gateway and the foundry-samples model-gateway
connections). Then a call made the way Foundry makes it from that body (POST {target}/chat/completions,
the key placed as authConfig says) reaches a local stand-in of the endpoint.
"""
from __future__ import annotations

import json

import pytest
import requests

from deployment.definitions import MODEL_NAME
from deployment.foundry_agents import (
    GATEWAY_CONNECTION,
    agent_model,
    build_gateway_connection,
    gateway_target,
)

from fakes.deploy_fixtures import SMOKE_REPLY as REPLY
from fakes.ml_client import SECRET_KEY as KEY
from fakes.ml_client import FakeMLClient
ENDPOINT = "https://phi3-chat-1a2b.eastus.inference.ml.azure.com/score"


def body_of(connection) -> dict:
    return connection._to_rest_object().as_dict()


def test_the_body_has_the_documented_fields() -> None:
    properties = body_of(build_gateway_connection(ENDPOINT, KEY, MODEL_NAME))["properties"]
    assert properties == {
        "category": "ModelGateway",
        "target": ENDPOINT + "/v1",
        "authType": "ApiKey",
        "credentials": {"key": KEY},
        "isSharedToAll": False,
        "metadata": {
            "deploymentInPath": "false",
            "models": json.dumps([{"name": MODEL_NAME, "properties": {
                "model": {"name": MODEL_NAME, "version": "", "format": "OpenAI"}}}]),
            "authConfig": json.dumps({"type": "api_key", "name": "Authorization", "format": "Bearer {api_key}"}),
        },
    }
    assert all(isinstance(value, str) for value in properties["metadata"].values())  # the service takes strings only


def test_the_sdk_reads_its_own_body_back() -> None:
    from azure.ai.ml.entities import WorkspaceConnection

    built = build_gateway_connection(ENDPOINT, KEY, MODEL_NAME)
    back = WorkspaceConnection._from_rest_object(built._to_rest_object())
    assert (back.type, back.target, back.is_shared) == ("model_gateway", ENDPOINT + "/v1", False)
    assert back.metadata == built.metadata and back.credentials.key == KEY


def test_written_through_the_ml_client_as_a_model_gateway_connection() -> None:
    client = FakeMLClient()
    client.connections.create_or_update(build_gateway_connection(ENDPOINT, KEY, MODEL_NAME))
    (call,) = client.calls
    assert call.args["name"] == GATEWAY_CONNECTION and call.args["category"].endswith("MODEL_GATEWAY")


@pytest.mark.parametrize(
    ("endpoint", "target"),
    [
        ("https://h.eastus.inference.ml.azure.com", "https://h.eastus.inference.ml.azure.com/v1"),
        ("https://h.eastus.inference.ml.azure.com/score/", "https://h.eastus.inference.ml.azure.com/score/v1"),
        ("https://h.eastus.inference.ml.azure.com/v1", "https://h.eastus.inference.ml.azure.com/v1"),
    ],
)
def test_the_target_is_the_probed_endpoint_plus_v1(endpoint: str, target: str) -> None:
    assert gateway_target(endpoint) == target


@pytest.mark.parametrize("routes", ["host", "score"])
def test_a_call_made_as_foundry_makes_it_reaches_the_endpoint(scoring_server, routes: str) -> None:
    """deploymentInPath false: POST {target}/chat/completions, the model in the body, the key as authConfig says."""
    scoring_server.routes = routes
    probed = scoring_server.host if routes == "host" else scoring_server.url
    properties = body_of(build_gateway_connection(probed, KEY, MODEL_NAME))["properties"]
    auth = json.loads(properties["metadata"]["authConfig"])
    model = json.loads(properties["metadata"]["models"])[0]["name"]
    response = requests.post(
        properties["target"] + "/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={auth["name"]: auth["format"].replace("{api_key}", properties["credentials"]["key"])},
        timeout=10,
    )
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == REPLY


def test_an_agent_names_the_model_through_the_connection() -> None:
    assert agent_model(MODEL_NAME) == f"{GATEWAY_CONNECTION}/{MODEL_NAME}"


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="key is empty"):
        build_gateway_connection(ENDPOINT, "", MODEL_NAME)
