"""The Foundry path: the stack's Foundry project gets the connections a flow and an agent there need.

- `phi_endpoint`, the tutorial's Prompt flow connection, with the fields the local store gets: deploy
  builds one PhiConnection (deployment/connection.py) and hands it to both writers;
- `phi-gateway`, the `ModelGateway` connection Foundry agents call the fine-tune through
  (deployment/foundry_agents.py), when the endpoint speaks the OpenAI API.

Deploy writes them after traffic moved (`deploy --foundry-connection`); the preflight checked the
project's scope before anything billed. Should a write still fail (a role removed meanwhile), the
deploy has succeeded: the failure is a warning with the command that writes them alone,
`python -m deployment.foundry [--stack S | --outputs-file P] [--endpoint-name N]`.

A Prompt flow running in Azure AI Foundry reads connections from its project, not from the local
store. Prompt flow's CustomConnection is a workspace connection of category CustomKeys: secrets
in `credentials.keys`, configs in `metadata` (see promptflow's workspace connection provider).
azure-ai-ml 1.35 has no public credentials class for CustomKeys, so `_CustomKeys` supplies the
two hooks its WorkspaceConnection uses to build the REST body.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Sequence

from common.azure import azure_errors
from common.cli import UserError, first_line, run_cli, say
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


def write_connections(connection: PhiConnection, outputs: "StackOutputs",
                      make_client: Callable[["StackOutputs"], Any]) -> None:
    """Write `phi_endpoint` and, for an OpenAI endpoint, `phi-gateway` into the project (azure-core retries)."""
    from deployment.definitions import MODEL_NAME
    from deployment.foundry_agents import build_gateway_connection

    project = require_project(outputs)
    client = make_client(dataclasses.replace(outputs, workspace_name=project))
    entities = [build_connection(connection)]
    if connection.api == "openai":
        entities.append(build_gateway_connection(connection.endpoint, connection.secrets()["key"], MODEL_NAME))
    for entity in entities:
        with azure_errors(f"writing connection {entity.name} in Foundry project {project}",
                          outputs.role_assignments_created_on):
            client.connections.create_or_update(entity)
        say(f"    wrote workspace connection {entity.name} ({entity.type}) in Foundry project {project}")


def foundry_writer(
    outputs: "StackOutputs", make_client: Callable[["StackOutputs"], Any], retry: str = "python -m deployment.foundry"
) -> Callable[[PhiConnection], None]:
    """The deploy's writer: after traffic moved a failure must not read as a failed deploy, so it is a warning
    that names the command to write the connections alone (`retry`)."""
    require_project(outputs)

    def write(connection: PhiConnection) -> None:
        try:
            write_connections(connection, outputs, make_client)
        except Exception as err:  # the deployment is live: nothing here may fail the deploy
            detail = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {first_line(err)}"
            detail = detail.replace(connection.key, "<hidden>") if connection.key else detail
            say(f"    warning: the deployment is live and the local connection is written, but the Foundry project's "
                f"connections were not: {detail.rstrip()} Write them alone with `{retry}` once that is fixed "
                "(Azure AI Developer on the project: docs/DEPLOY.md, \"Who needs which role\").")

    return write


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m deployment.foundry`: write the Foundry project's connections for the live deployment."""
    from common import azure as azure_edge
    from deployment import definitions
    from infra.outputs import add_stack_arguments, load_stack_outputs

    parser = argparse.ArgumentParser(prog="python -m deployment.foundry", description=(
        "Write phi_endpoint and phi-gateway into the stack's Foundry project for the endpoint's live deployment "
        "(what `deploy --foundry-connection` does after traffic moved)."))
    add_stack_arguments(parser)
    parser.add_argument("--endpoint-name", help="endpoint name (default: phi3-chat-<hash of the workspace>)")
    args = parser.parse_args(argv)
    azure_edge.quiet_sdk()
    outputs = load_stack_outputs(args.outputs_file, args.stack)
    require_project(outputs)
    ml = azure_edge.make_ml_client(outputs)
    name = definitions.check_endpoint_name(args.endpoint_name or definitions.default_endpoint_name(outputs))
    with azure_errors(f"reading endpoint {name}", outputs.role_assignments_created_on):
        endpoint = ml.online_endpoints.get(name=name)
        traffic = {k: int(v or 0) for k, v in (endpoint.traffic or {}).items()}
        live = max(traffic, key=lambda k: traffic[k], default=None)
        if not live or not traffic[live]:
            raise UserError(f"endpoint {name} has no live deployment: deploy one with `python -m deployment.deploy`.")
        key = ml.online_endpoints.get_keys(name=name).primary_key
    write_connections(PhiConnection.probed(str(endpoint.scoring_uri), key, live), outputs, azure_edge.make_ml_client)
    return 0


if __name__ == "__main__":
    run_cli(main)
