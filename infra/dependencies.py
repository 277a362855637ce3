"""The Azure ML workspace's four dependencies: storage, Key Vault, monitoring, container registry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pulumi
from pulumi_azure_native import applicationinsights, containerregistry, keyvault, operationalinsights, storage

from infra.stack_config import InfraConfig


@dataclass(frozen=True)
class Dependencies:
    storage: storage.StorageAccount
    key_vault: keyvault.Vault
    log_analytics: operationalinsights.Workspace
    app_insights: applicationinsights.Component
    registry: containerregistry.Registry


def create_dependencies(
    cfg: InfraConfig,
    resource_group_name: pulumi.Input[str],
    names: Mapping[str, pulumi.Input[str]],
    tenant_id: pulumi.Input[str],
    tags: Mapping[str, str],
) -> Dependencies:
    common = dict(resource_group_name=resource_group_name, location=cfg.location, tags=dict(tags))

    account = storage.StorageAccount(
        "storage",
        account_name=names["storage"],
        kind="StorageV2",  # Azure ML needs general-purpose v2 ...
        sku=storage.SkuArgs(name="Standard_LRS"),  # ... not premium,
        is_hns_enabled=False,  # ... and no hierarchical namespace (ADLS Gen2) for the workspace store.
        allow_blob_public_access=False,
        minimum_tls_version="TLS1_2",
        enable_https_traffic_only=True,
        # Left on: the workspace's default datastores authenticate with the account key.
        allow_shared_key_access=True,
        **common,
    )

    vault = keyvault.Vault(
        "key-vault",
        vault_name=names["key_vault"],
        properties=keyvault.VaultPropertiesArgs(
            tenant_id=tenant_id,
            sku=keyvault.SkuArgs(family="A", name="standard"),
            enable_rbac_authorization=True,
            enable_soft_delete=True,
            soft_delete_retention_in_days=cfg.key_vault_retention_days,
            # Azure refuses an explicit `false`, and `true` can never be undone: send it only when asked.
            enable_purge_protection=True if cfg.key_vault_purge_protection else None,
            access_policies=[],
        ),
        **common,
    )

    logs = operationalinsights.Workspace(
        "log-analytics",
        workspace_name=names["log_analytics"],
        sku=operationalinsights.WorkspaceSkuArgs(name="PerGB2018"),
        retention_in_days=cfg.log_retention_days,
        **common,
    )

    insights = applicationinsights.Component(
        "app-insights",
        resource_name_=names["app_insights"],
        kind="web",
        application_type="web",
        ingestion_mode="LogAnalytics",  # workspace-based (classic Application Insights is retired)
        workspace_resource_id=logs.id,
        **common,
    )

    registry = containerregistry.Registry(
        "registry",
        registry_name=names["registry"],
        sku=containerregistry.SkuArgs(name=cfg.container_registry_sku),
        admin_user_enabled=False,  # pulls use the identity's AcrPull role, never the admin password
        **common,
    )
    return Dependencies(account, vault, logs, insights, registry)
