"""The tutorial's Foundry path: the `phi_endpoint` connection as a workspace connection in the project.

A Prompt flow running in Azure AI Foundry reads connections from its project, not from the local
store. Prompt flow's CustomConnection is a workspace connection of category CustomKeys: secrets
in `credentials.keys`, configs in `metadata` (see promptflow's workspace connection provider).
azure-ai-ml 1.35 has no public credentials class for CustomKeys, so `_CustomKeys` supplies the
two hooks its WorkspaceConnection uses to build the REST body.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable

from common.azure import azure_errors
from common.cli import UserError, say
from deployment.connection import CONNECTION_NAME, connection_configs

if TYPE_CHECKING:  # pragma: no cover
    from infra.outputs import StackOutputs

PROJECT_ALIASES = ("ai_project_name", "project_name")
"""Other stack-output names a hand-made stack may give the Foundry project (a workspace of kind
`project`); this project's stack exports the typed `foundry_project_name`."""


def foundry_project(outputs: "StackOutputs") -> str | None:
    if outputs.foundry_project_name:
        return outputs.foundry_project_name
    return next((str(outputs.extra[key]) for key in PROJECT_ALIASES if outputs.extra.get(key)), None)


def require_project(outputs: "StackOutputs") -> str:
    project = foundry_project(outputs)
    if not project:
        raise UserError(
            "--foundry-connection needs a Foundry project, but the stack outputs name none "
            f"(looked for foundry_project_name, {', '.join(PROJECT_ALIASES)} in {outputs.source}). Enable the project in the Pulumi "
            "program and run `pulumi up`, or drop the flag (the local connection is written anyway)."
        )
    return project


def build_connection(endpoint: str, key: str, deployment: str | None) -> Any:
    """A WorkspaceConnection that Prompt flow reads back as CustomConnection `phi_endpoint`."""
    from azure.ai.ml._restclient.arm_ml_service.models import (
        CustomKeys,
        CustomKeysWorkspaceConnectionProperties,
    )
    from azure.ai.ml.entities import ApiKeyConfiguration, WorkspaceConnection

    class _CustomKeys(ApiKeyConfiguration):
        def _to_workspace_connection_rest_object(self) -> Any:
            return CustomKeys(keys_property={"key": self.key})

        def _get_rest_properties_class(self) -> Any:
            return CustomKeysWorkspaceConnectionProperties

    metadata = {
        **connection_configs(endpoint, deployment),
        "azureml.flow.connection_type": "Custom",
        "azureml.flow.module": "promptflow.connections",
    }
    return WorkspaceConnection(
        name=CONNECTION_NAME, type="custom", target=endpoint, credentials=_CustomKeys(key=key), metadata=metadata
    )


def foundry_writer(
    outputs: "StackOutputs", make_client: Callable[["StackOutputs"], Any]
) -> Callable[[str, str, str], None]:
    """A connection writer bound to the project's MLClient (built from the same subscription/RG)."""
    project = require_project(outputs)

    def write(endpoint: str, key: str, deployment: str) -> None:
        client = make_client(dataclasses.replace(outputs, workspace_name=project))
        connection = build_connection(endpoint, key, deployment)
        with azure_errors(f"writing connection {CONNECTION_NAME} in Foundry project {project}"):
            client.connections.create_or_update(connection)  # azure-core retries 408/429/5xx (common.azure.RETRY)
        say(f"    wrote workspace connection {CONNECTION_NAME} in Foundry project {project}")

    return write
