"""The GitHub Actions identity (config `githubRepository`): OIDC sign-in, no secret anywhere.

GitHub's token for a job in environment `azure` of OWNER/NAME carries the subject
`repo:OWNER/NAME:environment:azure`; the federated credential trusts exactly that subject, so
only jobs that declare `environment: azure` in that repository can sign in as this identity.

Its roles are the least that submit, deploy and teardown (endpoints) need in this resource group;
it cannot assign roles, create computes or change the workspace, so it cannot run `pulumi up`
(docs/INFRA.md, "The GitHub identity").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pulumi
from pulumi_azure_native import authorization, managedidentity

from common.github_oidc import AUDIENCE
from infra import roles
from infra.identity import Grant, assign_roles, create_identity

ISSUER = "https://token.actions.githubusercontent.com"
ENVIRONMENT = "azure"


def subject(repository: str) -> str:
    """The `sub` claim of GitHub's OIDC token for a job in the `azure` environment of OWNER/NAME."""
    return f"repo:{repository}:environment:{ENVIRONMENT}"


@dataclass(frozen=True)
class GitHubIdentity:
    identity: managedidentity.UserAssignedIdentity
    credential: managedidentity.FederatedIdentityCredential
    assignments: list[authorization.RoleAssignment]


def github_grants(
    workspace_id: pulumi.Input[str], resource_group_id: pulumi.Input[str], endpoint_identity_id: pulumi.Input[str]
) -> list[Grant]:
    return [
        Grant("github-uai-data-scientist-workspace", roles.AZUREML_DATA_SCIENTIST, workspace_id,
              "CI submits jobs, registers models and creates, updates and deletes online endpoints "
              "(no compute or workspace writes)"),
        Grant("github-uai-mi-operator-endpoint-uai", roles.MANAGED_IDENTITY_OPERATOR, endpoint_identity_id,
              "creating an endpoint that runs as the endpoint identity needs "
              "userAssignedIdentities/assign/action on that identity"),
        Grant("github-uai-reader-rg", roles.READER, resource_group_id,
              "CI reads the stack's resources and its own effective permissions (the preflight); read-only"),
    ]


def create_github_identity(
    repository: str,
    name: pulumi.Input[str],
    resource_group_name: pulumi.Input[str],
    location: str,
    tags: Mapping[str, str],
    subscription_id: pulumi.Input[str],
    role_grants: list[Grant],
) -> GitHubIdentity:
    identity = create_identity("github-identity", name, resource_group_name, location, tags)
    credential = managedidentity.FederatedIdentityCredential(
        "github-federated-credential",
        federated_identity_credential_resource_name="github-actions-environment-azure",
        resource_name_=identity.name,
        resource_group_name=resource_group_name,
        issuer=ISSUER,
        audiences=[AUDIENCE],
        subject=subject(repository),
    )
    return GitHubIdentity(identity, credential, assign_roles(identity.principal_id, subscription_id, role_grants))
