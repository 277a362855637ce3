"""The tutorial's Foundry path: the `phi_endpoint` connection as a workspace connection in the project.

The fields are the ones the local store gets: deploy builds one PhiConnection (deployment/connection.py)
and hands it to both writers.

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
from deployment.connection import PhiConnection

if TYPE_CHECKING:  # pragma: no cover
    from infra.outputs import StackOutputs


def require_project(outputs: "StackOutputs") -> str:
    project = outputs.foundry_project_name
    if not project:
        raise UserError(
            f"--foundry-connection needs a Foundry project, but the stack outputs ({outputs.source}) have no "
            "foundry_project_name. Enable the project in the Pulumi program and run `pulumi up`, or drop the flag "
            "(the local connection is written anyway)."
        )
    return project


def build_connection(connection: PhiConnection) -> Any:
    """A WorkspaceConnection that Prompt flow reads back as the same CustomConnection the local store holds."""
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
        **connection.configs(),
        "azureml.flow.connection_type": "Custom",
        "azureml.flow.module": "promptflow.connections",
    }
    return WorkspaceConnection(name=connection.name, type="custom", target=connection.endpoint,
                               credentials=_CustomKeys(key=connection.secrets()["key"]), metadata=metadata)


def foundry_writer(
    outputs: "StackOutputs", make_client: Callable[["StackOutputs"], Any]
) -> Callable[[PhiConnection], None]:
    """A connection writer bound to the project's MLClient (built from the same subscription/RG)."""
    project = require_project(outputs)

    def write(connection: PhiConnection) -> None:
        client = make_client(dataclasses.replace(outputs, workspace_name=project))
        with azure_errors(f"writing connection {connection.name} in Foundry project {project}"):
            client.connections.create_or_update(build_connection(connection))  # azure-core retries (common.azure.RETRY)
        say(f"    wrote workspace connection {connection.name} in Foundry project {project}")

    return write
