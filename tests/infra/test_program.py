"""The Pulumi program, run as `pulumi up` / `pulumi preview` run it, asserted on the inputs Azure would get.

The checks are plain functions over a `Run` so the mutation tests can show that each one fails
when the program is changed in a wrong way.
"""
from __future__ import annotations

import json
import re

import pytest
from pulumi_harness import CLIENT_CONFIG, CREATED_ON, SUBSCRIPTION, TENANT, AzureMocks, Run, engine_config

from infra import naming, roles
from infra.outputs import REQUIRED_KEYS, load_stack_outputs

ROLE_DEF = re.compile(
    r"^/subscriptions/(?P<sub>[0-9a-f-]{36})/providers/Microsoft\.Authorization/roleDefinitions/(?P<guid>[0-9a-f-]{36})$"
)
EXPECTED_TYPES = {
    "azure-native:resources:ResourceGroup",
    "azure-native:storage:StorageAccount",
    "azure-native:keyvault:Vault",
    "azure-native:operationalinsights:Workspace",
    "azure-native:applicationinsights:Component",
    "azure-native:containerregistry:Registry",
    "azure-native:managedidentity:UserAssignedIdentity",
    "azure-native:machinelearningservices:Workspace",
    "azure-native:machinelearningservices:Compute",
    "azure-native:authorization:RoleAssignment",
}
# Azure's built-in role GUIDs, written out here so a wrong constant in infra/roles.py cannot hide.
AZUREML_DATA_SCIENTIST = "f6c7c914-8db3-469d-8ca1-694a8f32e121"
STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
AZUREML_METRICS_WRITER = "635dd51f-9968-44d3-b7fb-6d9a6bd613ae"
UNTAGGABLE = {"azure-native:authorization:RoleAssignment", "azure-native:consumption:Budget"}


# ---------------------------------------------------------------- checks


def check_wiring(run: Run) -> None:
    ws = run.named("workspace")
    for key, dependency in [("storageAccount", "StorageAccount"), ("keyVault", "keyvault:Vault"),
                            ("applicationInsights", "Component"), ("containerRegistry", "Registry")]:
        assert ws.inputs[key] == run.one(dependency).id, f"workspace {key} is not the {dependency}"
    assert ws.inputs["kind"] == "Default"
    assert ws.inputs["identity"] == {"type": "SystemAssigned"}
    insights = run.one("Component")
    assert insights.inputs["workspaceResourceId"] == run.one("operationalinsights:Workspace").id
    assert insights.inputs["ingestionMode"] == "LogAnalytics"
    rg_name = run.one("ResourceGroup").outputs["name"]
    for res in run.resources:
        if "resourceGroupName" in res.inputs and not res.type.endswith("ResourceGroup"):
            assert res.inputs["resourceGroupName"] == rg_name, res.name


def expected_roles(run: Run) -> dict[str, dict[str, str]]:
    """Identity logical name -> {role GUID: scope}: the training identity and the endpoint identity."""
    storage, registry = run.one("StorageAccount").id, run.one("Registry").id
    return {
        # AzureML Data Scientist, not Contributor: any job submitter can act as this identity (test_reach.py)
        "identity": {AZUREML_DATA_SCIENTIST: run.named("workspace").id, STORAGE_BLOB_DATA_READER: storage,
                     ACR_PULL: registry},
        "endpoint-identity": {ACR_PULL: registry, STORAGE_BLOB_DATA_READER: storage,
                              AZUREML_METRICS_WRITER: run.named("workspace").id},
    }


def roles_held(run: Run) -> dict[str, dict[str, dict]]:
    """Principal id -> {role GUID: the assignment's inputs}, checking each definition id on the way."""
    held: dict[str, dict[str, dict]] = {}
    for ra in run.of_type("RoleAssignment"):
        match = ROLE_DEF.match(ra.inputs["roleDefinitionId"])
        assert match, f"{ra.name}: role definition id {ra.inputs['roleDefinitionId']!r} is not subscription-scoped"
        assert match["sub"] == SUBSCRIPTION
        assert match["guid"] not in held.get(ra.inputs["principalId"], {}), f"{ra.name}: the same role twice"
        held.setdefault(ra.inputs["principalId"], {})[match["guid"]] = ra.inputs
    return held


def check_roles(run: Run, expected: dict[str, dict[str, str]] | None = None) -> None:
    """Each identity holds exactly its roles, on the right scopes, as a ServicePrincipal; no one else holds any."""
    expected = expected or expected_roles(run)
    held = roles_held(run)
    for logical, scopes in expected.items():
        principal = run.named(logical).outputs["principalId"]
        mine = held.pop(principal, {})
        assert set(mine) == set(scopes), f"{logical} roles assigned: {sorted(mine)}"
        for guid, inputs in mine.items():
            assert inputs["scope"] == scopes[guid], f"{logical}: role {guid} on the wrong scope"
            assert inputs.get("principalType") == "ServicePrincipal", f"role {guid}: principal type {inputs.get('principalType')}"
            assert inputs["roleAssignmentName"] == roles.assignment_name(inputs["scope"], principal, guid)
    assert not held, f"role assignments for principals no identity of the stack has: {sorted(held)}"


def check_compute(run: Run, vm_size: str, max_nodes: int, priority: str) -> None:
    compute = run.one("Compute")
    props = compute.inputs["properties"]
    assert props["computeType"] == "AmlCompute"
    inner = props["properties"]
    assert inner["vmSize"] == vm_size
    assert inner["vmPriority"] == priority
    assert inner["scaleSettings"] == {
        "minNodeCount": 0, "maxNodeCount": max_nodes, "nodeIdleTimeBeforeScaleDown": "PT120S",
    }
    assert inner["remoteLoginPortPublicAccess"] == "Disabled", "public SSH port"
    assert "userAccountCredentials" not in inner
    assert compute.inputs["workspaceName"] == run.named("workspace").outputs["name"]
    assert compute.inputs["computeName"] == naming.compute_name(vm_size, priority)
    assert compute.inputs["identity"] == {
        "type": "UserAssigned", "userAssignedIdentities": [run.named("identity").id],  # the training identity
    }


def check_security(run: Run, retention_days: int = 7, purge_protection: bool = False) -> None:
    st = run.one("StorageAccount").inputs
    assert st["kind"] == "StorageV2"
    assert st["sku"]["name"].startswith("Standard_")
    assert st["isHnsEnabled"] is False
    assert st["allowBlobPublicAccess"] is False
    assert st["minimumTlsVersion"] == "TLS1_2"
    assert st["enableHttpsTrafficOnly"] is True
    vault = run.one("keyvault:Vault").inputs["properties"]
    assert vault["enableRbacAuthorization"] is True
    assert vault["enableSoftDelete"] is True
    assert vault["softDeleteRetentionInDays"] == retention_days
    assert vault["tenantId"] == TENANT
    assert vault["sku"] == {"family": "A", "name": "standard"}
    if purge_protection:
        assert vault["enablePurgeProtection"] is True
    else:
        assert "enablePurgeProtection" not in vault  # Azure refuses an explicit false
    assert run.one("Registry").inputs["adminUserEnabled"] is False


def check_tags(run: Run, stack: str, extra: dict[str, str] | None = None) -> None:
    expected = {"project": "finetune-phi", "stack": stack, **(extra or {})}
    for res in run.resources:
        if res.type not in UNTAGGABLE:
            assert res.inputs.get("tags") == expected, f"{res.type} {res.name} tags: {res.inputs.get('tags')}"


def check_exports(run: Run) -> None:
    outputs = run.outputs
    assert set(REQUIRED_KEYS) <= set(outputs), f"missing exports: {set(REQUIRED_KEYS) - set(outputs)}"
    assert not run.secret_outputs
    uai, endpoint = run.named("identity"), run.named("endpoint-identity")
    assert outputs["subscription_id"] == CLIENT_CONFIG["subscriptionId"]
    assert outputs["tenant_id"] == CLIENT_CONFIG["tenantId"]
    assert outputs["resource_group_name"] == run.one("ResourceGroup").outputs["name"]
    assert outputs["workspace_name"] == run.named("workspace").outputs["name"]
    assert outputs["storage_account_name"] == run.one("StorageAccount").outputs["name"]
    assert outputs["container_registry_name"] == run.one("Registry").outputs["name"]
    assert outputs["key_vault_name"] == run.one("keyvault:Vault").outputs["name"]
    assert outputs["compute_name"] == run.one("Compute").outputs["name"]
    assert outputs["uai_name"] == uai.outputs["name"]
    assert outputs["uai_resource_id"] == uai.id
    assert outputs["uai_client_id"] == uai.outputs["clientId"], "uai_client_id is not the identity's client id"
    assert outputs["uai_principal_id"] == uai.outputs["principalId"]
    assert outputs["endpoint_uai_name"] == endpoint.outputs["name"]
    assert outputs["endpoint_uai_resource_id"] == endpoint.id
    assert outputs["endpoint_uai_client_id"] == endpoint.outputs["clientId"]
    assert outputs["endpoint_uai_principal_id"] == endpoint.outputs["principalId"]
    assert endpoint.id != uai.id
    assert outputs["role_assignments_created_on"] == CREATED_ON
    assert not any(re.search(r"key$|password|secret|token|connection", k) for k in outputs), sorted(outputs)


# ---------------------------------------------------------------- pulumi up, default config


def test_up_creates_the_expected_resources(default_up: Run) -> None:
    assert {r.type for r in default_up.resources} == EXPECTED_TYPES
    # one more identity (the endpoint's) and six role assignments in all
    assert len(default_up.resources) == len(EXPECTED_TYPES) + 1 + 5
    assert len(default_up.of_type("UserAssignedIdentity")) == 2 and not default_up.of_type("FederatedIdentityCredential")
    assert [token for token, _ in default_up.mocks.calls] == ["azure-native:authorization:getClientConfig"]
    for res in default_up.resources:
        if "location" in res.inputs:
            assert res.inputs["location"] == "eastus", res.name


def test_up_wires_the_workspace_to_its_dependencies(default_up: Run) -> None:
    check_wiring(default_up)


def test_up_assigns_the_identity_its_roles(default_up: Run) -> None:
    check_roles(default_up)


def test_up_cluster_scales_to_zero_with_the_default_a100(default_up: Run) -> None:
    check_compute(default_up, "Standard_NC24ads_A100_v4", 1, "Dedicated")
    assert default_up.one("Compute").inputs["computeName"].startswith("gpu-a100-")


def test_up_storage_and_vault_are_locked_down(default_up: Run) -> None:
    check_security(default_up)


def test_up_tags_everything(default_up: Run) -> None:
    check_tags(default_up, "dev")


def test_up_exports_the_whole_contract(default_up: Run, tmp_path) -> None:
    check_exports(default_up)
    assert default_up.outputs["compute_vm_size"] == "Standard_NC24ads_A100_v4"
    assert default_up.outputs["compute_max_nodes"] == 1
    assert default_up.outputs["location"] == "eastus"
    # What `pulumi stack output --json` would print is exactly what training and deployment load.
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(default_up.outputs))
    loaded = load_stack_outputs(outputs_file=path)
    assert loaded.as_dict() == {key: default_up.outputs[key] for key in REQUIRED_KEYS}
    assert loaded.foundry_project_name is None and loaded.budget_name is None


def test_up_names_follow_azure_rules(default_up: Run) -> None:
    kinds = {
        "StorageAccount": "storage", "keyvault:Vault": "key_vault", "Registry": "registry",
        "operationalinsights:Workspace": "log_analytics", "Component": "app_insights",
        "Compute": "compute",
    }
    for suffix, kind in kinds.items():
        naming.check(kind, default_up.one(suffix).outputs["name"])
    for uai in default_up.of_type("UserAssignedIdentity"):
        naming.check("identity", uai.outputs["name"])
    naming.check("workspace", default_up.named("workspace").outputs["name"])


# ---------------------------------------------------------------- pulumi preview


def test_preview_plans_the_same_resources_with_computed_values_unknown(run) -> None:
    preview = run(preview=True)
    assert {r.type for r in preview.resources} == EXPECTED_TYPES
    assert len(preview.of_type("RoleAssignment")) == 6
    # Known at preview: everything that comes from config or the client config ...
    assert preview.outputs["compute_vm_size"] == "Standard_NC24ads_A100_v4"
    assert preview.outputs["compute_max_nodes"] == 1
    assert preview.outputs["subscription_id"] == SUBSCRIPTION
    # ... unknown until Azure creates the identity.
    assert {"uai_principal_id", "uai_client_id", "uai_resource_id", "endpoint_uai_principal_id",
            "endpoint_uai_client_id", "endpoint_uai_resource_id", "role_assignments_created_on"} <= preview.unknown_outputs
    for ra in preview.of_type("RoleAssignment"):
        assert ra.inputs["principalType"] == "ServicePrincipal"
        assert ROLE_DEF.match(ra.inputs["roleDefinitionId"])
    check_compute_inputs = preview.one("Compute").inputs["properties"]["properties"]
    assert check_compute_inputs["scaleSettings"]["minNodeCount"] == 0
    check_security(preview)
    check_tags(preview, "dev")


# ---------------------------------------------------------------- overrides

OVERRIDES = {
    "namePrefix": "acme",
    "computeVmSize": "Standard_NC40ads_H100_v5",
    "computeMaxNodes": 4,
    "computePriority": "LowPriority",
    "containerRegistrySku": "Standard",
    "keyVaultPurgeProtection": True,
    "keyVaultRetentionDays": 30,
    "logRetentionDays": 90,
    "enableFoundry": True,
    "budgetAmount": 250,
    "budgetEmails": ["ml-team@example.com", "lead@example.com"],
    "tags": "team=ml,costcenter=4242",
}


@pytest.mark.parametrize("preview", [False, True], ids=["up", "preview"])
def test_overrides_reach_the_resources(run, preview: bool) -> None:
    result = run(preview=preview, stack="prod", config=OVERRIDES, location="westeurope")
    inner = result.one("Compute").inputs["properties"]["properties"]
    assert (inner["vmSize"], inner["vmPriority"], inner["scaleSettings"]["maxNodeCount"]) == (
        "Standard_NC40ads_H100_v5", "LowPriority", 4)
    assert result.one("Compute").inputs["computeName"].startswith("gpu-h100-")
    check_security(result, retention_days=30, purge_protection=True)
    check_tags(result, "prod", {"team": "ml", "costcenter": "4242"})
    assert result.one("Registry").inputs["sku"] == {"name": "Standard"}
    assert result.one("operationalinsights:Workspace").inputs["retentionInDays"] == 90
    assert all(r.inputs.get("location", "westeurope") == "westeurope" for r in result.resources)
    assert result.one("StorageAccount").outputs["name"].startswith("stacme")
    assert result.outputs["location"] == "westeurope"
    assert result.outputs["compute_max_nodes"] == 4
    if preview:
        return
    check_compute(result, "Standard_NC40ads_H100_v5", 4, "LowPriority")
    check_roles(result)
    check_exports(result)
    hub, project = result.named("foundry-hub"), result.named("foundry-project")
    assert hub.inputs["kind"] == "Hub" and project.inputs["kind"] == "Project"
    assert project.inputs["hubResourceId"] == hub.id
    for key in ("storageAccount", "keyVault", "applicationInsights", "containerRegistry"):
        assert hub.inputs[key] == result.named("workspace").inputs[key]
    assert result.outputs["foundry_project_name"] == project.outputs["name"]
    assert result.outputs["foundry_hub_name"] == hub.outputs["name"]
    budget = result.one("Budget").inputs
    assert budget["scope"] == result.one("ResourceGroup").id
    assert budget["amount"] == 250 and budget["timeGrain"] == "Monthly" and budget["category"] == "Cost"
    assert re.match(r"^\d{4}-\d{2}-01T00:00:00Z$", budget["timePeriod"]["startDate"])
    for notification in budget["notifications"].values():
        assert notification["contactEmails"] == OVERRIDES["budgetEmails"]
        assert notification["enabled"] is True
    assert result.outputs["budget_name"] == "budget-acme-prod"


@pytest.mark.slow
def test_a_new_size_or_priority_means_a_new_cluster_name(run) -> None:
    base = run().one("Compute").inputs["computeName"]
    bigger = run(config={"computeVmSize": "Standard_NC48ads_A100_v4"}).one("Compute").inputs["computeName"]
    spot = run(config={"computePriority": "LowPriority"}).one("Compute").inputs["computeName"]
    assert len({base, bigger, spot}) == 3
    assert run().one("Compute").inputs["computeName"] == base  # and stable otherwise


@pytest.mark.slow
def test_a_recreated_stack_gets_fresh_names(run) -> None:
    """Pulumi gives a re-created resource group a new random suffix, so soft-deleted names are never reused."""
    first, second = run(), run()
    for suffix in ("StorageAccount", "keyvault:Vault", "Registry", "operationalinsights:Workspace"):
        assert first.one(suffix).outputs["name"] != second.one(suffix).outputs["name"], suffix
    assert first.named("workspace").outputs["name"] != second.named("workspace").outputs["name"]


def test_budget_and_foundry_are_off_by_default(default_up: Run) -> None:
    assert not default_up.of_type("Budget")
    assert [r.name for r in default_up.of_type("machinelearningservices:Workspace")] == ["workspace"]


# ---------------------------------------------------------------- invalid config: one error, nothing created


def test_bad_config_fails_with_one_message_before_any_resource(run) -> None:
    from infra.stack_config import InfraConfigError

    mocks = AzureMocks(preview=False)
    with pytest.raises(InfraConfigError) as caught:
        run(config={"computeMaxNodes": "lots", "computePriority": "Spot", "computeVmSize": "NC24"}, location=None,
            mocks=mocks)
    assert mocks.resources == [] and mocks.calls == []  # nothing created, nothing asked
    message = str(caught.value)
    for expected in ("computeMaxNodes must be a whole number", "computePriority must be one of Dedicated, LowPriority",
                     "computeVmSize must be an Azure VM size", "azure-native:location is not set"):
        assert expected in message
    assert message.count("\n  - ") == 4


def test_a_mistyped_key_is_reported_not_ignored(run, repo_root) -> None:
    from infra.stack_config import InfraConfigError

    config = engine_config(repo_root, None, "eastus")
    config["finetune-phi:computeVMSize"] = "Standard_NC24ads_A100_v4"
    with pytest.raises(InfraConfigError, match="computeVMSize is not a config key of this project "
                                               r"\(did you mean computeVmSize\?\)"):
        run(raw_config=config)


def test_without_pulumi_yaml_defaults_the_program_uses_its_own(run) -> None:
    """Older CLIs do not merge project defaults into PULUMI_CONFIG; the program must not depend on it."""
    result = run(raw_config={"azure-native:location": "eastus"})
    check_compute(result, "Standard_NC24ads_A100_v4", 1, "Dedicated")
    check_security(result)


def test_a_program_that_drops_a_contract_key_refuses_to_finish(run, monkeypatch) -> None:
    import pulumi

    import infra.program

    real = infra.program.export_outputs
    monkeypatch.setattr(infra.program, "export_outputs",
                        lambda outputs: real({k: v for k, v in outputs.items() if k != "uai_principal_id"}))
    with pytest.raises(pulumi.RunError, match="the program does not export uai_principal_id"):
        run()


# ---------------------------------------------------------------- mutation proof: wrong programs fail the checks


def _wrong_scope(monkeypatch) -> None:
    import infra.program
    from infra.identity import endpoint_grants as real_grants

    def endpoint_grants(storage_id, registry_id, workspace_id):
        # The mistake: the endpoint's blob reader granted on the registry instead of the storage account.
        return real_grants(registry_id, registry_id, workspace_id)

    monkeypatch.setattr(infra.program, "endpoint_grants", endpoint_grants)


def _user_principal_type(monkeypatch) -> None:
    import infra.identity

    real = infra.identity.authorization.RoleAssignment

    def role_assignment(name, **kwargs):
        kwargs.pop("principal_type")  # the mistake: fall back to Azure's default "User"
        return real(name, **kwargs)

    monkeypatch.setattr(infra.identity.authorization, "RoleAssignment", role_assignment)


def _wrong_role(monkeypatch) -> None:
    import infra.roles

    acr_push = "8311e382-0749-4cb8-b61a-304f252e45ec"
    monkeypatch.setattr(infra.roles, "ACR_PULL", acr_push)
    monkeypatch.setitem(infra.roles.ROLE_NAMES, acr_push, "AcrPush")


def _tenant_scoped_role(monkeypatch) -> None:
    import infra.roles

    monkeypatch.setattr(infra.roles, "role_definition_id",
                        lambda sub, guid: f"/providers/Microsoft.Authorization/roleDefinitions/{guid}")


def _public_ssh(monkeypatch) -> None:
    import infra.ml

    real = infra.ml.ml.AmlComputePropertiesArgs

    def props(**kwargs):
        kwargs["remote_login_port_public_access"] = "Enabled"
        return real(**kwargs)

    monkeypatch.setattr(infra.ml.ml, "AmlComputePropertiesArgs", props)


def _workspace_on_wrong_vault(monkeypatch) -> None:
    import infra.ml

    real = infra.ml._wiring
    monkeypatch.setattr(infra.ml, "_wiring", lambda deps: {**real(deps), "key_vault": deps.storage.id})


def _missing_export(monkeypatch) -> None:
    import infra.program

    real = infra.program.export_outputs
    monkeypatch.setattr(infra.program, "export_outputs",
                        lambda outputs: real({k: v for k, v in outputs.items() if k != "uai_client_id"}
                                             | {"uai_client_id": "not-the-identity"}))


@pytest.mark.parametrize(
    ("mutate", "check", "caught_by"),
    [
        (_wrong_scope, check_roles, f"endpoint-identity: role {STORAGE_BLOB_DATA_READER} on the wrong scope"),
        (_user_principal_type, check_roles, "principal type User"),
        (_wrong_role, check_roles, "roles assigned"),
        (_tenant_scoped_role, check_roles, "is not subscription-scoped"),
        (_public_ssh, lambda run: check_compute(run, "Standard_NC24ads_A100_v4", 1, "Dedicated"), "public SSH port"),
        (_workspace_on_wrong_vault, check_wiring, "workspace keyVault is not the keyvault:Vault"),
        (_missing_export, check_exports, "uai_client_id is not the identity's client id"),
    ],
    ids=["role-on-wrong-scope", "principal-type-user", "acrpush-not-acrpull", "role-id-not-subscription-scoped",
         "public-ssh", "workspace-on-wrong-vault", "wrong-export"],
)
def test_a_wrong_program_fails_the_checks(run, monkeypatch, mutate, check, caught_by) -> None:
    mutate(monkeypatch)
    wrong = run()
    with pytest.raises(AssertionError, match=re.escape(caught_by)):
        check(wrong)
