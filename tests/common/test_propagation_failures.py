"""Which deployment failures are a fresh role that has not applied yet (common.azure.propagation_failure).

Azure says a new role assignment can take up to 10 minutes to apply. A deployment created in that
window fails with the registry's or the storage's own words, not a 403: AcrPull shows as BadArgument
("... does not have pull permission ..."), Storage Blob Data Reader as the blob service's
AuthorizationPermissionMismatch in the storage initializer. Those, and only those, get the hint.
"""
from __future__ import annotations

import pytest

from common.azure import propagation_failure

ACR = "AcrPull on the container registry"
STORAGE = "Storage Blob Data Reader on the storage account"


@pytest.mark.parametrize(
    ("detail", "role"),
    [
        ("(BadArgument) The user-assigned identity id-ftphi-endpoint-1a2b3c4d does not have pull permission on "
         "the container registry crfinetunephi1a2b3c4d.", ACR),
        ("BadArgument: Unable to pull image: not authorized to pull from crfinetunephi1a2b3c4d.azurecr.io", ACR),
        ("storage-initializer: AuthorizationPermissionMismatch: This request is not authorized to perform this "
         "operation using this permission.", STORAGE),
        ("Failed to download model: (AuthorizationFailure) This request is not authorized to perform this operation.",
         STORAGE),
    ],
)
def test_the_registry_and_storage_words_for_a_missing_role(detail: str, role: str) -> None:
    assert propagation_failure(detail) == role


@pytest.mark.parametrize(
    "detail",
    [
        "ResourceNotReady: User container has crashed or terminated.",
        "NotEnoughQuota: not enough quota for Standard_NC24ads_A100_v4",
        "BadArgument: the instance type Standard_X is not supported",
        "",
    ],
)
def test_other_failures_are_not_called_propagation(detail: str) -> None:
    assert propagation_failure(detail) is None
