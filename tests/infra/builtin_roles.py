"""A recorded snapshot of the Azure built-in role definitions this project assigns or names.

Recorded 2026-11 from the published definitions (learn.microsoft.com "Azure built-in roles", the
`permissions` block of each role's JSON, as `az role definition list --name <role>` prints it),
because offline tests cannot ask ARM. Only `permissions` matters here; conditions are left out.
Used to prove facts, not assumptions: which identity can write what, what a job submitter can
reach through the identities it can run as (test_reach.py), and that every role the preflight
names really grants the action it is named for.

Sources, each role's `actions` / `notActions` / `dataActions` as published (2026-12 re-checked for
the roles the reach test relies on):
- Owner, Contributor, Reader, User Access Administrator, Role Based Access Control Administrator:
  https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/general
- AzureML Data Scientist (f6c7c914-..., definition last updated 2023-06-01), AzureML Metrics Writer:
  https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/ai-machine-learning
- Managed Identity Operator: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/identity
- Storage Blob Data Reader: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/storage
- AcrPull: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/containers
"""
from __future__ import annotations

from infra import roles
from infra.permissions import Permission

DEFINITIONS: dict[str, Permission] = {
    roles.OWNER: Permission(actions=("*",)),
    roles.CONTRIBUTOR: Permission(
        actions=("*",),
        not_actions=(
            "Microsoft.Authorization/*/Delete",
            "Microsoft.Authorization/*/Write",
            "Microsoft.Authorization/elevateAccess/Action",
            "Microsoft.Blueprint/blueprintAssignments/write",
            "Microsoft.Blueprint/blueprintAssignments/delete",
            "Microsoft.Compute/galleries/share/action",
            "Microsoft.Purview/consents/write",
            "Microsoft.Purview/consents/delete",
            "Microsoft.Resources/deploymentStacks/manageDenySetting/action",
            "Microsoft.Subscription/cancel/action",
            "Microsoft.Subscription/enable/action",
        ),
    ),
    roles.READER: Permission(actions=("*/read",)),
    roles.USER_ACCESS_ADMINISTRATOR: Permission(actions=("*/read", "Microsoft.Authorization/*", "Microsoft.Support/*")),
    roles.RBAC_ADMINISTRATOR: Permission(actions=(
        "Microsoft.Authorization/roleAssignments/write",
        "Microsoft.Authorization/roleAssignments/delete",
        "*/read",
        "Microsoft.Support/*",
    )),
    roles.ACR_PULL: Permission(actions=("Microsoft.ContainerRegistry/registries/pull/read",)),
    roles.STORAGE_BLOB_DATA_READER: Permission(
        actions=(
            "Microsoft.Storage/storageAccounts/blobServices/containers/read",
            "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action",
        ),
        data_actions=("Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",),
    ),
    roles.AZUREML_METRICS_WRITER: Permission(
        actions=("Microsoft.MachineLearningServices/workspaces/metrics/resource/write",)),
    roles.AZUREML_DATA_SCIENTIST: Permission(
        actions=(
            "Microsoft.MachineLearningServices/workspaces/*/read",
            "Microsoft.MachineLearningServices/workspaces/*/action",
            "Microsoft.MachineLearningServices/workspaces/*/delete",
            "Microsoft.MachineLearningServices/workspaces/*/write",
        ),
        not_actions=(
            "Microsoft.MachineLearningServices/workspaces/delete",
            "Microsoft.MachineLearningServices/workspaces/write",
            "Microsoft.MachineLearningServices/workspaces/computes/*/write",
            "Microsoft.MachineLearningServices/workspaces/computes/*/delete",
            "Microsoft.MachineLearningServices/workspaces/computes/listKeys/action",
            "Microsoft.MachineLearningServices/workspaces/listKeys/action",
            "Microsoft.MachineLearningServices/workspaces/hubs/write",
            "Microsoft.MachineLearningServices/workspaces/hubs/delete",
            "Microsoft.MachineLearningServices/workspaces/featurestores/write",
            "Microsoft.MachineLearningServices/workspaces/featurestores/delete",
        ),
    ),
    roles.MANAGED_IDENTITY_OPERATOR: Permission(actions=(
        "Microsoft.ManagedIdentity/userAssignedIdentities/*/read",
        "Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
        "Microsoft.Authorization/*/read",
        "Microsoft.Insights/alertRules/*",
        "Microsoft.Resources/subscriptions/resourceGroups/read",
        "Microsoft.Resources/deployments/*",
        "Microsoft.Support/*",
    )),
}

BY_NAME = {roles.ROLE_NAMES[guid]: permission for guid, permission in DEFINITIONS.items()}
