"""The user-assigned identity (UAI) shared by the training cluster and the online endpoint, and its roles.

Roles (all with principal type ServicePrincipal; see docs/INFRA.md for the reasoning):
- Contributor on the resource group: jobs on the cluster run as this identity and manage runs,
  outputs and models in the workspace.
- Storage Blob Data Reader on the workspace storage: the endpoint downloads the model with it.
- AcrPull on the registry: the cluster and the endpoint pull environment images (admin user is off).
- AzureML Metrics Writer on the workspace: what Azure grants an endpoint's system identity; the
  endpoint's UAI gets no automatic roles.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pulumi
from pulumi_azure_native import authorization, managedidentity

from infra import roles


@dataclass(frozen=True)
class Grant:
    """One role for the identity on one scope."""

    logical_name: str
    role_guid: str
    scope: pulumi.Input[str]
    why: str


def create_identity(
    name: pulumi.Input[str], resource_group_name: pulumi.Input[str], location: str, tags: Mapping[str, str]
) -> managedidentity.UserAssignedIdentity:
    return managedidentity.UserAssignedIdentity(
        "identity",
        resource_name_=name,
        resource_group_name=resource_group_name,
        location=location,
        tags=dict(tags),
    )


def grants(
    resource_group_id: pulumi.Input[str],
    storage_id: pulumi.Input[str],
    registry_id: pulumi.Input[str],
    workspace_id: pulumi.Input[str],
) -> list[Grant]:
    """The identity's role assignments: least privilege for the cluster's jobs and the online endpoint."""
    return [
        Grant("uai-contributor-rg", roles.CONTRIBUTOR, resource_group_id,
              "jobs on the cluster manage runs, outputs and models in the workspace"),
        Grant("uai-blob-reader-storage", roles.STORAGE_BLOB_DATA_READER, storage_id,
              "the online endpoint downloads the model from the workspace storage"),
        Grant("uai-acrpull-registry", roles.ACR_PULL, registry_id,
              "the cluster and the endpoint pull environment images (registry admin user is off)"),
        Grant("uai-metrics-writer-workspace", roles.AZUREML_METRICS_WRITER, workspace_id,
              "the online endpoint writes metrics, as a system-assigned identity could"),
    ]


def assign_roles(
    identity: managedidentity.UserAssignedIdentity,
    subscription_id: pulumi.Input[str],
    role_grants: list[Grant],
) -> list[authorization.RoleAssignment]:
    assignments = []
    for grant in role_grants:
        scope = pulumi.Output.from_input(grant.scope)
        assignments.append(
            authorization.RoleAssignment(
                grant.logical_name,
                role_assignment_name=pulumi.Output.all(scope, identity.principal_id).apply(
                    lambda args, guid=grant.role_guid: roles.assignment_name(args[0], args[1], guid)
                ),
                scope=scope,
                principal_id=identity.principal_id,
                # The default is "User": Azure then refuses a managed identity, and retries in vain on
                # PrincipalNotFound while the new identity replicates.
                principal_type="ServicePrincipal",
                role_definition_id=pulumi.Output.from_input(subscription_id).apply(
                    lambda sub, guid=grant.role_guid: roles.role_definition_id(sub, guid)
                ),
                description=f"finetune-phi: {roles.ROLE_NAMES[grant.role_guid]} because {grant.why}",
            )
        )
    return assignments
