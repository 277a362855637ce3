"""The user-assigned identities (UAIs) and their role assignments.

Two identities, so that the public scoring container holds no write rights (docs/INFRA.md):
- the training identity, attached to the cluster: jobs run as it, so every job submitter holds its
  roles: AzureML Data Scientist on the workspace (config contributorOnResourceGroup gives it the
  tutorials' Contributor on the resource group instead), Storage Blob Data Reader, AcrPull;
- the endpoint identity, which online deployments run as: only AcrPull on the registry, Storage
  Blob Data Reader on the storage and AzureML Metrics Writer on the workspace.
Every assignment has principal type ServicePrincipal and a deterministic name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import pulumi
from pulumi_azure_native import authorization, managedidentity

from infra import roles


@dataclass(frozen=True)
class Grant:
    """One role for an identity on one scope."""

    logical_name: str
    role_guid: str
    scope: pulumi.Input[str]
    why: str


def create_identity(
    logical_name: str,
    name: pulumi.Input[str],
    resource_group_name: pulumi.Input[str],
    location: str,
    tags: Mapping[str, str],
) -> managedidentity.UserAssignedIdentity:
    return managedidentity.UserAssignedIdentity(
        logical_name,
        resource_name_=name,
        resource_group_name=resource_group_name,
        location=location,
        tags=dict(tags),
    )


def training_grants(
    workspace_id: pulumi.Input[str], storage_id: pulumi.Input[str], registry_id: pulumi.Input[str],
    resource_group_id: pulumi.Input[str] | None = None,
) -> list[Grant]:
    """The cluster's jobs: a workspace role, Storage Blob Data Reader and AcrPull.

    Any job submitter can take tokens as this identity, so the workspace role is AzureML Data
    Scientist (runs and MLflow, datastore secrets, outputs and models; no computes/write,
    workspaces/write or delete, or listKeys), not Contributor, whose `*` includes computes/write at
    any scope. With `resource_group_id` (config contributorOnResourceGroup) it is the tutorials'
    Contributor on the resource group instead. Either covers AzureML Metrics Writer.
    """
    workspace_role = (Grant("uai-contributor-rg", roles.CONTRIBUTOR, resource_group_id,
                            "jobs on the cluster manage runs, outputs and models (the tutorials' scope, by config)")
                      if resource_group_id is not None else
                      Grant("uai-data-scientist-workspace", roles.AZUREML_DATA_SCIENTIST, workspace_id,
                            "jobs on the cluster log to MLflow, read datastores and register outputs and models"))
    return [
        workspace_role,
        Grant("uai-blob-reader-storage", roles.STORAGE_BLOB_DATA_READER, storage_id,
              "jobs read identity-based data inputs from the workspace storage"),
        Grant("uai-acrpull-registry", roles.ACR_PULL, registry_id,
              "the cluster pulls environment images (registry admin user is off)"),
    ]


def endpoint_grants(
    storage_id: pulumi.Input[str], registry_id: pulumi.Input[str], workspace_id: pulumi.Input[str]
) -> list[Grant]:
    """The online deployments: read the model, pull the image, write metrics; nothing else."""
    return [
        Grant("endpoint-uai-acrpull-registry", roles.ACR_PULL, registry_id,
              "online deployments pull the serving image (registry admin user is off)"),
        Grant("endpoint-uai-blob-reader-storage", roles.STORAGE_BLOB_DATA_READER, storage_id,
              "online deployments download the model and code from the workspace storage"),
        Grant("endpoint-uai-metrics-writer-workspace", roles.AZUREML_METRICS_WRITER, workspace_id,
              "online deployments write metrics, as a system-assigned identity could"),
    ]


def assign_roles(
    principal_id: pulumi.Input[str], subscription_id: pulumi.Input[str], role_grants: Sequence[Grant]
) -> list[authorization.RoleAssignment]:
    assignments = []
    for grant in role_grants:
        scope = pulumi.Output.from_input(grant.scope)
        assignments.append(
            authorization.RoleAssignment(
                grant.logical_name,
                role_assignment_name=pulumi.Output.all(scope, principal_id).apply(
                    lambda args, guid=grant.role_guid: roles.assignment_name(args[0], args[1], guid)
                ),
                scope=scope,
                principal_id=principal_id,
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
