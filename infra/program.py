"""The Pulumi program: config -> resources -> stack outputs (docs/INFRA.md, "Stack outputs")."""
from __future__ import annotations

import pulumi
from pulumi_azure_native import authorization, resources

from infra import naming
from infra.budget import create_budget
from infra.dependencies import create_dependencies
from infra.github import create_github_identity, github_grants
from infra.identity import assign_roles, create_identity, endpoint_grants, training_grants
from infra.ml import create_compute, create_foundry, create_workspace
from infra.outputs import REQUIRED_KEYS, latest_time
from infra.stack_config import PROJECT, load_config


def export_outputs(outputs: dict[str, object]) -> dict[str, object]:
    """Export the contract keys (all of them, or fail) and any extras; nothing secret goes in here. Returns what it exported."""
    missing = [key for key in REQUIRED_KEYS if key not in outputs]
    if missing:
        raise pulumi.RunError(f"the program does not export {', '.join(missing)} (infra.outputs.REQUIRED_KEYS)")
    for key, value in outputs.items():
        pulumi.export(key, value)
    return outputs


def main() -> dict[str, object]:
    """Declare the stack's resources; returns the outputs it exports (the tests assert on them)."""
    cfg = load_config()
    stack = pulumi.get_stack()
    tags = {"project": PROJECT, "stack": stack, **cfg.tags}
    client = authorization.get_client_config_output()

    group = resources.ResourceGroup(
        naming.resource_group_logical_name(cfg.name_prefix, stack), location=cfg.location, tags=tags
    )
    # Every other name carries a token derived from the (randomly suffixed) resource group name.
    all_names = group.name.apply(lambda rg: naming.names(cfg.name_prefix, naming.stack_token(PROJECT, stack, rg)))
    names = {kind: all_names.apply(lambda found, k=kind: found[k]) for kind in naming.NAME_KINDS}

    deps = create_dependencies(cfg, group.name, names, client.tenant_id, tags)
    workspace = create_workspace(cfg, names["workspace"], group.name, deps, tags)
    identity = create_identity("identity", names["identity"], group.name, cfg.location, tags)
    endpoint_identity = create_identity("endpoint-identity", names["endpoint_identity"], group.name, cfg.location, tags)
    assignments = assign_roles(identity.principal_id, client.subscription_id,
                               training_grants(workspace.id, deps.storage.id, deps.registry.id,
                                               group.id if cfg.contributor_on_resource_group else None))
    assignments += assign_roles(endpoint_identity.principal_id, client.subscription_id,
                                endpoint_grants(deps.storage.id, deps.registry.id, workspace.id))
    compute = create_compute(cfg, naming.compute_name(cfg.compute_vm_size, cfg.compute_priority),
                             group.name, workspace, identity.id, tags)

    extras: dict[str, object] = {
        "workspace_resource_id": workspace.id,
        "compute_priority": cfg.compute_priority,
        "application_insights_name": deps.app_insights.name,
        "log_analytics_workspace_name": deps.log_analytics.name,
    }
    if cfg.enable_foundry:
        foundry = create_foundry(cfg, names["foundry_hub"], names["foundry_project"], group.name, deps, tags)
        extras.update(foundry_hub_name=foundry.hub.name, foundry_project_name=foundry.project.name)
    if cfg.budget_amount > 0:
        budget = create_budget(cfg, naming.budget_name(cfg.name_prefix, stack), group.id)
        extras["budget_name"] = budget.name
    if cfg.github_repository:
        github = create_github_identity(
            cfg.github_repository, names["github_identity"], group.name, cfg.location, tags, client.subscription_id,
            github_grants(workspace.id, group.id, endpoint_identity.id),
        )
        assignments += github.assignments
        extras["github_uai_client_id"] = github.identity.client_id
    # New role assignments take minutes to apply; submit and deploy wait for them (infra/preflight.py).
    extras["role_assignments_created_on"] = pulumi.Output.all(*(a.created_on for a in assignments)).apply(latest_time)

    outputs: dict[str, object] = {
        "subscription_id": client.subscription_id,
        "tenant_id": client.tenant_id,
        "resource_group_name": group.name,
        "location": cfg.location,
        "workspace_name": workspace.name,
        "storage_account_name": deps.storage.name,
        "container_registry_name": deps.registry.name,
        "key_vault_name": deps.key_vault.name,
        "compute_name": compute.name,
        "compute_vm_size": cfg.compute_vm_size,
        "compute_max_nodes": cfg.compute_max_nodes,
        "uai_name": identity.name,
        "uai_resource_id": identity.id,
        "uai_client_id": identity.client_id,
        "uai_principal_id": identity.principal_id,
        "endpoint_uai_name": endpoint_identity.name,
        "endpoint_uai_resource_id": endpoint_identity.id,
        "endpoint_uai_client_id": endpoint_identity.client_id,
        "endpoint_uai_principal_id": endpoint_identity.principal_id,
        **extras,
    }
    return export_outputs(outputs)
