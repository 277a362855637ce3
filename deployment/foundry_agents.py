"""The connection Foundry agents use to call the fine-tune: a `ModelGateway` workspace connection.

Foundry Agent Service reaches models it does not host through "bring your own model" gateway
connections (learn.microsoft.com/azure/foundry/agents/how-to/ai-gateway; the connection samples in
azure-ai-foundry/foundry-samples, `01-connections/model-gateway`). The documented body:

    properties: category ModelGateway, target ".../v1", authType ApiKey, credentials.key,
                metadata (every value a string; JSON values serialized):
                  deploymentInPath "false"  -> Foundry POSTs {target}/chat/completions, model in the body
                  models           [{"name": N, "properties": {"model": {"name": N, "version": "", "format": "OpenAI"}}}]
                  authConfig       {"type": "api_key", "name": "Authorization", "format": "Bearer {api_key}"}

`authConfig` is there because the gateway default is an `api-key` header, and an Azure ML endpoint
(like this project's server) takes the key as `Authorization: Bearer`. The target is the probed
`endpoint` (deployment/endpoint_probe.py) plus `/v1`, so Foundry's `{target}/chat/completions` is
the route the smoke test just used. An agent names the model `<connection name>/<model name>`.

azure-ai-ml 1.35 has the category (`ConnectionCategory.MODEL_GATEWAY`) and its `WorkspaceConnection`
with `ApiKeyConfiguration` builds exactly this body (`_to_rest_object`, what
`MLClient.connections.create_or_update` sends), so the body comes from the SDK's real entities. Its
YAML schema does not list the type, so the entity is checked through the REST round trip instead.
"""
from __future__ import annotations

import json
from typing import Any

GATEWAY_CONNECTION = "phi-gateway"
"""The connection's name in the Foundry project; agents say `phi-gateway/<model>`."""
GATEWAY_TYPE = "model_gateway"
AUTH_CONFIG = {"type": "api_key", "name": "Authorization", "format": "Bearer {api_key}"}


def gateway_target(endpoint: str) -> str:
    """`{endpoint}/v1`: where `/chat/completions` answers (`endpoint` is `https://HOST` or `https://HOST/score`)."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def gateway_metadata(model: str) -> dict[str, str]:
    """The documented metadata, every value a string (JSON values serialized, as the samples send them)."""
    entry = {"name": model, "properties": {"model": {"name": model, "version": "", "format": "OpenAI"}}}
    return {
        "deploymentInPath": "false",
        "models": json.dumps([entry]),
        "authConfig": json.dumps(AUTH_CONFIG),
    }


def build_gateway_connection(endpoint: str, key: str, model: str, *, name: str = GATEWAY_CONNECTION) -> Any:
    """The `ModelGateway` connection as an azure-ai-ml WorkspaceConnection (not shared to all project users)."""
    from azure.ai.ml.entities import ApiKeyConfiguration, WorkspaceConnection

    if not key:
        raise ValueError("the endpoint key is empty: the gateway connection needs it")
    return WorkspaceConnection(
        name=name, type=GATEWAY_TYPE, target=gateway_target(endpoint),
        credentials=ApiKeyConfiguration(key=key), metadata=gateway_metadata(model), is_shared=False,
    )


def agent_model(model: str, name: str = GATEWAY_CONNECTION) -> str:
    """What a Foundry agent puts in its `model` field to reach the fine-tune through the connection."""
    return f"{name}/{model}"
