"""The files the training CLI reads: stack outputs and a tiny train/test data pair."""
from __future__ import annotations

from typing import Any

from fakes.quota import A100, LOCATION

STACK_OUTPUTS = {
    "subscription_id": "00000000-0000-0000-0000-000000000001",
    "tenant_id": "00000000-0000-0000-0000-000000000002",
    "resource_group_name": "rg-phi",
    "location": LOCATION,
    "workspace_name": "ws-phi",
    "storage_account_name": "stphi",
    "container_registry_name": "crphi",
    "key_vault_name": "kvphi",
    "compute_name": "gpu-a100",
    "compute_vm_size": A100,
    "compute_max_nodes": 2,
    "uai_name": "uai-phi",
    "uai_resource_id": "/subscriptions/s/resourceGroups/rg-phi/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-phi",
    "uai_client_id": "11111111-0000-0000-0000-000000000000",
    "uai_principal_id": "22222222-0000-0000-0000-000000000000",
    "endpoint_uai_name": "uai-phi-endpoint",
    "endpoint_uai_resource_id": "/subscriptions/s/resourceGroups/rg-phi/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-phi-endpoint",
    "endpoint_uai_client_id": "33333333-0000-0000-0000-000000000000",
    "endpoint_uai_principal_id": "44444444-0000-0000-0000-000000000000",
}


def write_stack_outputs(path: Any, **overrides: Any) -> Any:
    import json

    path.write_text(json.dumps({**STACK_OUTPUTS, **overrides}), encoding="utf-8")
    return path


def write_data(folder: Any, rows: int = 3, salt: str = "") -> Any:
    """A tiny train/test pair in the ultrachat `messages` format."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train.jsonl", rows), ("test.jsonl", 1)):
        lines = [
            json.dumps({"messages": [{"role": "user", "content": f"q{i}{salt}"}, {"role": "assistant", "content": f"a{i}"}]})
            for i in range(count)
        ]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
