"""Under the mock engine: who holds which role, judged by what the built-in roles really allow.

The endpoint identity (the public scoring container) holds exactly AcrPull, Storage Blob Data
Reader and AzureML Metrics Writer, and nothing that writes resources or assigns roles. The GitHub
identity (config githubRepository) signs in only through its federated credential and can do what
submit, deploy and teardown need, but nothing `pulumi up` needs.
"""
from __future__ import annotations

import json

import pytest
from builtin_roles import BY_NAME, DEFINITIONS
from pulumi_harness import Run
from test_program import ROLE_DEF, check_exports, check_roles, expected_roles, roles_held

from infra import roles
from infra.outputs import StackOutputs
from infra.permissions import Permission, allows
from infra.preflight import needs

REPO = "acme/finetune-phi"
WRITES_AND_GRANTS = [
    # control plane: change a resource, make a new one, or hand out access
    "Microsoft.Storage/storageAccounts/write",
    "Microsoft.Storage/storageAccounts/listKeys/action",
    "Microsoft.KeyVault/vaults/write",
    "Microsoft.ContainerRegistry/registries/write",
    "Microsoft.ContainerRegistry/registries/push/write",
    "Microsoft.MachineLearningServices/workspaces/write",
    "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/write",
    "Microsoft.ManagedIdentity/userAssignedIdentities/write",
    "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
    "Microsoft.Resources/deployments/write",
    "Microsoft.Authorization/roleAssignments/write",
    "Microsoft.Authorization/roleDefinitions/write",
]
ROLE_ASSIGNMENT_RIGHTS = ["Microsoft.Authorization/roleAssignments/write", "Microsoft.Authorization/roleDefinitions/write",
                          "Microsoft.Authorization/*"]


def permissions_of(run: Run, logical_name: str) -> list[Permission]:
    """The permission blocks of every role the identity holds (from the recorded built-in definitions)."""
    return [DEFINITIONS[guid] for guid in roles_held(run).get(run.named(logical_name).outputs["principalId"], {})]


@pytest.fixture(scope="module")
def github_up(repo_root) -> Run:
    from pulumi_harness import run_program

    with pytest.MonkeyPatch.context() as mp:
        return run_program(repo_root, mp, config={"githubRepository": REPO})


# ---------------------------------------------------------------- the endpoint identity


def test_the_endpoint_identity_holds_exactly_its_three_roles(default_up: Run) -> None:
    held = roles_held(default_up)[default_up.named("endpoint-identity").outputs["principalId"]]
    assert {roles.ROLE_NAMES[guid] for guid in held} == {
        "AcrPull", "Storage Blob Data Reader", "AzureML Metrics Writer (preview)"}
    check_roles(default_up)


def test_the_endpoint_identity_can_serve_but_not_write_or_grant(default_up: Run) -> None:
    granted = permissions_of(default_up, "endpoint-identity")
    assert allows(granted, "Microsoft.ContainerRegistry/registries/pull/read")
    assert allows(granted, "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read", data=True)
    assert allows(granted, "Microsoft.MachineLearningServices/workspaces/metrics/resource/write")
    can = [action for action in WRITES_AND_GRANTS if allows(granted, action)]
    assert can == [], f"the scoring container could {can}"
    assert not allows(granted, "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write", data=True)
    # ... while the training identity, through AzureML Data Scientist on the workspace, can create
    # endpoints: that is why the two are split (what it reaches: test_reach.py).
    assert allows(permissions_of(default_up, "identity"), "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/write")
    assert not allows(granted, "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/write")


def test_the_training_identity_still_covers_a_jobs_work_but_not_the_workspace_itself(default_up: Run) -> None:
    """AzureML Data Scientist, not Contributor: what a job does is left in, computes and the workspace out.
    Whether the job really does all of it under this role is shown live by infra/job_check.py."""
    granted, ml = permissions_of(default_up, "identity"), "Microsoft.MachineLearningServices/workspaces"
    for action in (f"{ml}/experiments/runs/write", f"{ml}/metrics/resource/write",  # MLflow runs, metrics
                   f"{ml}/datastores/listSecrets/action",  # the default datastores authenticate with the key
                   f"{ml}/models/versions/write", f"{ml}/data/versions/write", "Microsoft.ContainerRegistry/registries/pull/read"):
        assert allows(granted, action), action
    assert allows(granted, "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read", data=True)
    for action in (f"{ml}/computes/write", f"{ml}/computes/delete", f"{ml}/write", f"{ml}/delete", f"{ml}/listKeys/action",
                   "Microsoft.Authorization/roleAssignments/write"):
        assert not allows(granted, action), action


def test_the_endpoint_identity_is_not_the_clusters(default_up: Run) -> None:
    compute = default_up.one("Compute").inputs["identity"]["userAssignedIdentities"]
    assert compute == [default_up.named("identity").id]
    assert default_up.outputs["endpoint_uai_resource_id"] not in compute


# ---------------------------------------------------------------- the GitHub identity


def test_no_github_identity_without_the_config(default_up: Run) -> None:
    assert not default_up.of_type("FederatedIdentityCredential")
    assert "github_uai_client_id" not in default_up.outputs
    with pytest.raises(AssertionError):
        default_up.named("github-identity")


def test_the_federated_credential_trusts_only_the_repositorys_azure_environment(github_up: Run) -> None:
    fic = github_up.one("FederatedIdentityCredential").inputs
    assert fic["issuer"] == "https://token.actions.githubusercontent.com"
    assert fic["audiences"] == ["api://AzureADTokenExchange"]
    assert fic["subject"] == f"repo:{REPO}:environment:azure"
    assert fic["resourceName"] == github_up.named("github-identity").outputs["name"]
    assert fic["resourceGroupName"] == github_up.one("ResourceGroup").outputs["name"]
    assert not any("secret" in key.lower() or "password" in key.lower() for key in fic)


def test_the_github_identity_roles_and_export(github_up: Run) -> None:
    expected = expected_roles(github_up)
    expected["github-identity"] = {
        roles.AZUREML_DATA_SCIENTIST: github_up.named("workspace").id,
        roles.MANAGED_IDENTITY_OPERATOR: github_up.named("endpoint-identity").id,  # that identity only
        roles.READER: github_up.one("ResourceGroup").id,
    }
    check_roles(github_up, expected)
    check_exports(github_up)
    assert github_up.outputs["github_uai_client_id"] == github_up.named("github-identity").outputs["clientId"]
    assert StackOutputs.from_mapping(github_up.outputs).github_uai_client_id == github_up.outputs["github_uai_client_id"]
    github = roles_held(github_up)[github_up.named("github-identity").outputs["principalId"]]
    assert not set(github) & {roles.OWNER, roles.USER_ACCESS_ADMINISTRATOR, roles.RBAC_ADMINISTRATOR, roles.CONTRIBUTOR}


def test_the_github_identity_cannot_assign_roles_or_run_pulumi_up(github_up: Run) -> None:
    granted = permissions_of(github_up, "github-identity")
    assert not any(allows(granted, action) for action in ROLE_ASSIGNMENT_RIGHTS if "*" not in action)
    for action in ("Microsoft.MachineLearningServices/workspaces/computes/write",
                   "Microsoft.MachineLearningServices/workspaces/write",
                   "Microsoft.ManagedIdentity/userAssignedIdentities/write",
                   "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/write"):
        assert not allows(granted, action), action
    outputs = StackOutputs.from_mapping(github_up.outputs)
    assert [n for n in needs("up", outputs) if not allows(granted, n.action)], "the GitHub identity could run pulumi up"


@pytest.mark.parametrize("purpose", ["submit", "deploy", "teardown"])
def test_the_github_identity_can_do_what_ci_runs(github_up: Run, purpose: str) -> None:
    """Each right the preflight asks for, on its own scope, is granted by the roles held on that scope."""
    outputs = StackOutputs.from_mapping(github_up.outputs)
    principal = github_up.named("github-identity").outputs["principalId"]
    assignments = [ra.inputs for ra in github_up.of_type("RoleAssignment") if ra.inputs["principalId"] == principal]
    for need in needs(purpose, outputs):
        # a role applies at its scope and below it (ARM ids are case-insensitive)
        here = [DEFINITIONS[ROLE_DEF.match(a["roleDefinitionId"])["guid"]] for a in assignments
                if need.scope.lower().startswith(a["scope"].lower())]
        if need.optional:
            assert not allows(here, need.action), f"{need.action}: the docs say CI cannot {need.optional}"
        else:
            assert allows(here, need.action), f"{purpose}: CI lacks {need.action} on {need.where}"


def test_a_bad_repository_is_refused_before_anything_is_created(run) -> None:
    from infra.stack_config import InfraConfigError

    with pytest.raises(InfraConfigError, match=r"githubRepository must be OWNER/NAME"):
        run(config={"githubRepository": "https://github.com/acme/finetune-phi"})


# ---------------------------------------------------------------- the roles the messages name


@pytest.mark.parametrize("purpose", ["submit", "deploy", "teardown", "up"])
def test_every_role_a_message_names_grants_the_action(purpose: str, repo_root) -> None:
    """Facts from the recorded definitions, not our wording: each role named in a hint has the right."""
    outputs = StackOutputs.from_mapping(json.loads((repo_root / "docs/examples/stack-outputs.json").read_text()))
    for need in needs(purpose, outputs):
        named = sorted((name for name in BY_NAME if name in need.grant), key=need.grant.index)
        assert named, f"{need.action}: the hint names no built-in role"
        if "Contributor plus" in need.grant:  # the two-role alternative for role assignments
            for admin in ("User Access Administrator", "Role Based Access Control Administrator"):
                assert allows([BY_NAME["Contributor"], BY_NAME[admin]], need.action)
            assert not allows([BY_NAME["Contributor"]], need.action), "Contributor alone can assign roles?"
            assert allows([BY_NAME["Owner"]], need.action)
            continue
        assert allows([BY_NAME[named[0]]], need.action), f"{named[0]} does not grant {need.action}"


def test_the_facts_the_docs_correct() -> None:
    """AzureML Data Scientist alone can neither deploy with a user-assigned identity nor purge the workspace."""
    scientist = [BY_NAME["AzureML Data Scientist"]]
    assert not allows(scientist, "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action")
    assert allows([BY_NAME["Managed Identity Operator"]], "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action")
    assert not allows(scientist, "Microsoft.MachineLearningServices/workspaces/delete")
    assert allows(scientist, "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/delete")
    assert not allows([BY_NAME["Contributor"]], "Microsoft.Authorization/roleAssignments/write")
