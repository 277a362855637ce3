"""Azure built-in roles the program assigns or names, and deterministic role-assignment names."""
from __future__ import annotations

import uuid

CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
AZUREML_METRICS_WRITER = "635dd51f-9968-44d3-b7fb-6d9a6bd613ae"
AZUREML_DATA_SCIENTIST = "f6c7c914-8db3-469d-8ca1-694a8f32e121"
MANAGED_IDENTITY_OPERATOR = "f1a07417-d97a-45cb-824c-7a7467783830"
# Never assigned by the program; named in messages and checked against in tests.
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
USER_ACCESS_ADMINISTRATOR = "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9"
RBAC_ADMINISTRATOR = "f58310d9-a9f6-439a-9e8d-f62e7b41a168"

ROLE_NAMES = {
    CONTRIBUTOR: "Contributor",
    READER: "Reader",
    STORAGE_BLOB_DATA_READER: "Storage Blob Data Reader",
    ACR_PULL: "AcrPull",
    AZUREML_METRICS_WRITER: "AzureML Metrics Writer (preview)",
    AZUREML_DATA_SCIENTIST: "AzureML Data Scientist",
    MANAGED_IDENTITY_OPERATOR: "Managed Identity Operator",
    OWNER: "Owner",
    USER_ACCESS_ADMINISTRATOR: "User Access Administrator",
    RBAC_ADMINISTRATOR: "Role Based Access Control Administrator",
}

# Fixed namespace so the same (scope, principal, role) always yields the same assignment name.
_NAMESPACE = uuid.UUID("6f0c0d8e-5b0e-5a51-9d7e-2f1f3c6a7b10")


def role_definition_id(subscription_id: str, role_guid: str) -> str:
    """Subscription-scoped id of a built-in role definition, as ARM expects it."""
    return f"/subscriptions/{subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{role_guid}"


def assignment_name(scope: str, principal_id: str, role_guid: str) -> str:
    """Role assignment names are GUIDs; deriving them makes re-runs idempotent (no duplicate assignments)."""
    return str(uuid.uuid5(_NAMESPACE, f"{scope.lower()}|{principal_id.lower()}|{role_guid.lower()}"))
