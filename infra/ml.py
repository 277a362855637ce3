"""The Azure ML workspace, its training cluster, and the optional Azure AI Foundry hub and project."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pulumi
from pulumi_azure_native import machinelearningservices as ml

from infra.dependencies import Dependencies
from infra.stack_config import InfraConfig

IDLE_BEFORE_SCALE_DOWN = "PT120S"  # ISO-8601; the cluster returns to 0 nodes two minutes after the last job


@dataclass(frozen=True)
class Foundry:
    hub: ml.Workspace
    project: ml.Workspace


def _wiring(deps: Dependencies) -> dict[str, pulumi.Input[str]]:
    return dict(
        storage_account=deps.storage.id,
        key_vault=deps.key_vault.id,
        application_insights=deps.app_insights.id,
        container_registry=deps.registry.id,
    )


def create_workspace(
    cfg: InfraConfig,
    name: pulumi.Input[str],
    resource_group_name: pulumi.Input[str],
    deps: Dependencies,
    tags: Mapping[str, str],
) -> ml.Workspace:
    # A system-assigned identity: Azure grants it what the workspace needs on its four dependencies.
    # Making the UAI the workspace identity would need a second, broader set of roles for it.
    return ml.Workspace(
        "workspace",
        workspace_name=name,
        resource_group_name=resource_group_name,
        location=cfg.location,
        kind="Default",
        sku=ml.SkuArgs(name="Basic", tier="Basic"),
        friendly_name=f"finetune-phi ({pulumi.get_stack()})",
        description="Fine-tuning and serving Phi-3 (managed by Pulumi project finetune-phi).",
        identity=ml.ManagedServiceIdentityArgs(type="SystemAssigned"),
        public_network_access="Enabled",
        tags=dict(tags),
        **_wiring(deps),
    )


def create_compute(
    cfg: InfraConfig,
    name: str,
    resource_group_name: pulumi.Input[str],
    workspace: ml.Workspace,
    identity_id: pulumi.Input[str],
    tags: Mapping[str, str],
) -> ml.Compute:
    return ml.Compute(
        "training-cluster",
        compute_name=name,
        resource_group_name=resource_group_name,
        workspace_name=workspace.name,
        location=cfg.location,
        identity=ml.ManagedServiceIdentityArgs(type="UserAssigned", user_assigned_identities=[identity_id]),
        properties=ml.AmlComputeArgs(
            compute_type="AmlCompute",
            description=f"{cfg.compute_vm_size} x 0..{cfg.compute_max_nodes} ({cfg.compute_priority})",
            properties=ml.AmlComputePropertiesArgs(
                vm_size=cfg.compute_vm_size,
                vm_priority=cfg.compute_priority,
                os_type="Linux",
                scale_settings=ml.ScaleSettingsArgs(
                    min_node_count=0,
                    max_node_count=cfg.compute_max_nodes,
                    node_idle_time_before_scale_down=IDLE_BEFORE_SCALE_DOWN,
                ),
                # No SSH: no admin credentials and the remote-login port closed.
                remote_login_port_public_access="Disabled",
                # Nodes without a public IP need a VNet (or a managed network); this stack has
                # neither, so the nodes keep the default outbound public IP. Said explicitly because
                # the SDK would inject it anyway.
                enable_node_public_ip=True,
            ),
        ),
        tags=dict(tags),
    )


def create_foundry(
    cfg: InfraConfig,
    hub_name: pulumi.Input[str],
    project_name: pulumi.Input[str],
    resource_group_name: pulumi.Input[str],
    deps: Dependencies,
    tags: Mapping[str, str],
) -> Foundry:
    """An Azure AI Foundry hub on the same dependencies, and one project under it (the tutorial's Foundry path)."""
    hub = ml.Workspace(
        "foundry-hub",
        workspace_name=hub_name,
        resource_group_name=resource_group_name,
        location=cfg.location,
        kind="Hub",
        sku=ml.SkuArgs(name="Basic", tier="Basic"),
        friendly_name=f"finetune-phi hub ({pulumi.get_stack()})",
        identity=ml.ManagedServiceIdentityArgs(type="SystemAssigned"),
        tags=dict(tags),
        **_wiring(deps),
    )
    project = ml.Workspace(
        "foundry-project",
        workspace_name=project_name,
        resource_group_name=resource_group_name,
        location=cfg.location,
        kind="Project",
        hub_resource_id=hub.id,
        sku=ml.SkuArgs(name="Basic", tier="Basic"),
        friendly_name=f"finetune-phi project ({pulumi.get_stack()})",
        identity=ml.ManagedServiceIdentityArgs(type="SystemAssigned"),
        tags=dict(tags),
    )
    return Foundry(hub, project)
