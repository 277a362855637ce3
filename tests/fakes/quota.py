"""Compute sizes and quota usages as `MLClient.compute.list_sizes` / `list_usage` return them.

Built with the SDK's own REST conversion from the payloads the service sends (camelCase quirks included).
"""
from __future__ import annotations

from typing import Any

LOCATION = "eastus"
A100 = "Standard_NC24ads_A100_v4"


def usage(family: str, localized: str, used: int, limit: int, *, workspace: str | None = None) -> Any:
    """A Usage entity as `compute.list_usage` returns it (via the SDK's own REST conversion)."""
    from azure.ai.ml._restclient.arm_ml_service.models import Usage as RestUsage
    from azure.ai.ml.entities import Usage

    scope = f"/workspaces/{workspace}" if workspace else ""
    kind = "workspaces/dedicatedCores" if workspace else "vmFamily"
    rest = RestUsage(
        {
            "id": f"/subscriptions/s/providers/Microsoft.MachineLearningServices/locations/{LOCATION}{scope}/usages/{family}",
            "amlWorkspaceLocation": LOCATION,
            "type": f"Microsoft.MachineLearningServices/{kind}/usages",
            "unit": "Count",
            "currentValue": used,
            "limit": limit,
            "name": {"value": family, "localizedValue": localized},
        }
    )
    return Usage._from_rest_object(rest)


def vm_size(name: str, family: str, vcpus: int, gpus: int) -> Any:
    """A VmSize entity as `compute.list_sizes` returns it."""
    from azure.ai.ml._restclient.arm_ml_service.models import VirtualMachineSize
    from azure.ai.ml.entities import VmSize

    rest = VirtualMachineSize(
        {"name": name, "family": family, "vCPUs": vcpus, "gpus": gpus, "memoryGB": 220.0, "supportedComputeTypes": ["AmlCompute"]}
    )
    return VmSize._from_rest_object(rest)


def default_sizes() -> list[Any]:
    return [
        vm_size("Standard_E4s_v3", "standardESv3Family", 4, 0),
        vm_size(A100, "standardNCADSA100v4Family", 24, 1),
        vm_size("Standard_NC96ads_A100_v4", "standardNCADSA100v4Family", 96, 4),
    ]


def a100_usages(used: int = 0, limit: int = 48) -> list[Any]:
    return [
        usage("standardESv3Family", "Standard ESv3 Family Cluster Dedicated vCPUs", 0, 100),
        usage("standardNCADSA100v4Family", "Standard NCADSA100v4 Family Cluster Dedicated vCPUs", used, limit, workspace="ws"),
        usage("standardNCADSA100v4Family", "Standard NCADSA100v4 Family Cluster Dedicated vCPUs", used, limit),
        usage("totalCores", "Total Cluster Dedicated Regional vCPUs", used, 200),
    ]
