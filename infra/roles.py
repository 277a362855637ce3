"""Azure built-in roles the program assigns, and deterministic role-assignment names."""
from __future__ import annotations

import uuid

CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
AZUREML_METRICS_WRITER = "635dd51f-9968-44d3-b7fb-6d9a6bd613ae"

ROLE_NAMES = {
    CONTRIBUTOR: "Contributor",
    STORAGE_BLOB_DATA_READER: "Storage Blob Data Reader",
    ACR_PULL: "AcrPull",
    AZUREML_METRICS_WRITER: "AzureML Metrics Writer (preview)",
}

# Fixed namespace so the same (scope, principal, role) always yields the same assignment name.
_NAMESPACE = uuid.UUID("6f0c0d8e-5b0e-5a51-9d7e-2f1f3c6a7b10")


def role_definition_id(subscription_id: str, role_guid: str) -> str:
    """Subscription-scoped id of a built-in role definition, as ARM expects it."""
    return f"/subscriptions/{subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{role_guid}"


def assignment_name(scope: str, principal_id: str, role_guid: str) -> str:
    """Role assignment names are GUIDs; deriving them makes re-runs idempotent (no duplicate assignments)."""
    return str(uuid.uuid5(_NAMESPACE, f"{scope.lower()}|{principal_id.lower()}|{role_guid.lower()}"))
