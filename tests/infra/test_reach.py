"""What a job submitter can reach, through every identity it can run as, under the mock engine.

Whoever may submit a job holds the training identity's roles (a job takes tokens as the cluster's
identity), and whoever may deploy with the endpoint identity holds its roles. So the training
identity holds AzureML Data Scientist on the workspace, not Contributor (whose `*` includes
`computes/write` at any scope), unless the config key contributorOnResourceGroup brings back the
tutorials' Contributor on the resource group. Judged from the role assignments the program makes and
the recorded built-in role definitions (reach.py, builtin_roles.py).

Two submitters: the GitHub identity (config githubRepository: AzureML Data Scientist on the
workspace, Managed Identity Operator on the endpoint identity, Reader on the resource group), and
a person with AzureML Data Scientist on the workspace, what docs/INFRA.md says submit needs.
"""
from __future__ import annotations

import pytest
from pulumi_harness import SUBSCRIPTION, Run, run_program
from reach import ASSIGN, COMPUTES_WRITE, FEDERATE, Holding, Reach, covers, reach

from infra import roles

REPO = "acme/finetune-phi"
ML = "Microsoft.MachineLearningServices/workspaces"
ROLE_ASSIGNMENT_RIGHTS = ("Microsoft.Authorization/roleAssignments/write", "Microsoft.Authorization/roleAssignments/delete",
                          "Microsoft.Authorization/roleDefinitions/write", "Microsoft.Authorization/roleDefinitions/delete")


@pytest.fixture(scope="module")
def stacks(repo_root) -> dict[str, Run]:
    """The GitHub-enabled stack with the scope key off (the default) and on."""
    with pytest.MonkeyPatch.context() as mp:
        return {key: run_program(repo_root, mp, config={"githubRepository": REPO, "contributorOnResourceGroup": key == "on"})
                for key in ("off", "on")}


def ids(run: Run) -> dict[str, str]:
    return {
        "subscription": f"/subscriptions/{SUBSCRIPTION}",
        "resource group": run.one("ResourceGroup").id,
        "workspace": run.named("workspace").id,
        "storage": run.one("StorageAccount").id,
        "registry": run.one("Registry").id,
        "key vault": run.one("keyvault:Vault").id,
        "training identity": run.named("identity").id,
        "endpoint identity": run.named("endpoint-identity").id,
        "github identity": run.named("github-identity").id,
    }


def submitters(run: Run) -> dict[str, Reach]:
    person = Holding("person", roles.AZUREML_DATA_SCIENTIST, run.named("workspace").id)
    return {"github identity": reach(run, "github-identity"), "data scientist": reach(run, "person", [person])}


def writes_at_or_above(result: Reach, scope: str) -> list[str]:
    """Every non-read action pattern (or any data action) held at `scope` or above it."""
    found = []
    for h in result.holdings:
        if covers(h.scope, scope):
            found += [f"{roles.ROLE_NAMES[h.role]} via {h.via}: {pattern}" for pattern in
                      (*h.permission.actions, *h.permission.data_actions) if not pattern.lower().endswith("/read")]
    return found


# ---------------------------------------------------------------- the scope key off (the default)


def test_a_job_submitter_runs_as_the_training_identity_and_ci_also_as_the_endpoints(stacks) -> None:
    """The paths themselves are modelled: without them every check below would pass vacuously."""
    found = submitters(stacks["off"])
    assert found["data scientist"].runs_as == {"person": "itself", "identity": "submits a job to the cluster that runs as it"}
    assert found["github identity"].runs_as == {
        "github-identity": "itself", "identity": "submits a job to the cluster that runs as it",
        "endpoint-identity": "attaches it to an endpoint or cluster it creates"}


@pytest.mark.parametrize("who", ["github identity", "data scientist"])
def test_no_write_or_action_at_resource_group_or_subscription_scope(stacks, who: str) -> None:
    result, where = submitters(stacks["off"])[who], ids(stacks["off"])
    assert writes_at_or_above(result, where["resource group"]) == []
    for resource, action in [
        ("resource group", "Microsoft.Resources/subscriptions/resourceGroups/write"),
        ("resource group", "Microsoft.Resources/deployments/write"),
        ("resource group", f"{ML}/write"),  # a new workspace
        ("key vault", "Microsoft.KeyVault/vaults/write"),
        ("storage", "Microsoft.Storage/storageAccounts/write"),
        ("storage", "Microsoft.Storage/storageAccounts/listKeys/action"),
        ("registry", "Microsoft.ContainerRegistry/registries/write"),
        ("registry", "Microsoft.ContainerRegistry/registries/push/write"),
        ("training identity", "Microsoft.ManagedIdentity/userAssignedIdentities/write"),
    ]:
        assert not result.can(action, where[resource]), f"{who} can {action} on the {resource}"


@pytest.mark.parametrize("who", ["github identity", "data scientist"])
def test_no_role_assignment_right_anywhere(stacks, who: str) -> None:
    for holding in submitters(stacks["off"])[who].holdings:
        for action in ROLE_ASSIGNMENT_RIGHTS:
            assert not holding.permission.allows(action), f"{roles.ROLE_NAMES[holding.role]} via {holding.via}: {action}"


@pytest.mark.parametrize("who", ["github identity", "data scientist"])
def test_identities_are_assignable_only_the_endpoints_and_none_can_be_federated(stacks, who: str) -> None:
    result, where = submitters(stacks["off"])[who], ids(stacks["off"])
    for name in ("training identity", "github identity"):
        assert not result.can(ASSIGN, where[name]), f"{who} can attach the {name}"
    for name in ("training identity", "endpoint identity", "github identity"):
        assert not result.can(FEDERATE, where[name]), f"{who} can add a federated credential to the {name}"
    assert result.can(ASSIGN, where["endpoint identity"]) == (who == "github identity")  # deploy needs it


WORKSPACE_CONTROL = {
    # what AzureML Data Scientist's notActions keep from the training identity, unlike Contributor's `*`
    "create or resize clusters": COMPUTES_WRITE,
    "delete clusters": f"{ML}/computes/delete",
    "change the workspace": f"{ML}/write",
    "delete the workspace": f"{ML}/delete",
    "list the workspace's keys (the storage key among them)": f"{ML}/listKeys/action",
}


@pytest.mark.parametrize("who", ["github identity", "data scientist"])
def test_no_compute_write_workspace_change_or_workspace_keys_anywhere(stacks, who: str) -> None:
    """No holding reachable by a submitter allows any of these, at any scope it is held on."""
    result, where = submitters(stacks["off"])[who], ids(stacks["off"])
    assert "identity" in result.runs_as  # through the training identity's roles too
    found = [f"{label}: {roles.ROLE_NAMES[h.role]} via {h.via} on {h.scope}"
             for label, action in WORKSPACE_CONTROL.items() for h in result.holdings if h.permission.allows(action)]
    assert found == []
    assert not any(result.can(action, where["workspace"]) for action in WORKSPACE_CONTROL.values())


REMAINS = {
    # what a submitter can still reach (key off), and through which identity; docs/INFRA.md says the same
    "the storage account key, through the datastores' secrets": (
        f"{ML}/datastores/listSecrets/action", "workspace", {"github-identity", "identity"}),
    "the workspace connections' secrets": (f"{ML}/connections/listsecrets/action", "workspace", {"github-identity", "identity"}),
    "online endpoint keys": (f"{ML}/onlineEndpoints/listKeys/action", "workspace", {"github-identity", "identity"}),
    "creating online endpoints": (f"{ML}/onlineEndpoints/write", "workspace", {"github-identity", "identity"}),
    "registering models": (f"{ML}/models/versions/write", "workspace", {"github-identity", "identity"}),
    "attaching the endpoint identity": (ASSIGN, "endpoint identity", {"github-identity"}),
    # Reader's */read covers pull/read, as the registry docs say: Reader on the resource group can pull
    "pulling images": ("Microsoft.ContainerRegistry/registries/pull/read", "registry",
                       {"github-identity", "identity", "endpoint-identity"}),
}


def test_what_a_submitter_can_still_reach(stacks) -> None:
    """The list docs/INFRA.md gives, computed: the storage key stays reachable through
    datastores/listSecrets (AzureML Data Scientist includes it; the default datastores use the key),
    and so does what Data Scientist allows inside the workspace, short of WORKSPACE_CONTROL."""
    result, where = submitters(stacks["off"])["github identity"], ids(stacks["off"])
    found = {label: {h.via for h in result.granting(action, where[resource])}
             for label, (action, resource, _) in REMAINS.items()}
    assert found == {label: via for label, (_, _, via) in REMAINS.items()}
    blob = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"
    assert {h.via for h in result.granting(blob, where["storage"], data=True)} == {"identity", "endpoint-identity"}
    assert not result.can("Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write", where["storage"], data=True)


# ---------------------------------------------------------------- the scope key on: the tutorials' scope


def test_with_the_key_on_the_tutorials_resource_group_scope_comes_back(stacks) -> None:
    run, where = stacks["on"], ids(stacks["on"])
    contributor = [ra.inputs["scope"] for ra in run.of_type("RoleAssignment")
                   if ra.inputs["principalId"] == run.named("identity").outputs["principalId"]
                   and ra.inputs["roleDefinitionId"].endswith(roles.CONTRIBUTOR)]
    assert contributor == [where["resource group"]]
    result = submitters(run)["data scientist"]  # a person who may only submit jobs ...
    assert any(line.startswith("Contributor via identity: *") for line in writes_at_or_above(result, where["resource group"]))
    for resource, action in [*[("workspace", action) for action in WORKSPACE_CONTROL.values()],
                             ("key vault", "Microsoft.KeyVault/vaults/write"),
                             ("storage", "Microsoft.Storage/storageAccounts/listKeys/action"),
                             ("registry", "Microsoft.ContainerRegistry/registries/push/write"),
                             ("resource group", "Microsoft.Resources/deployments/write"),
                             ("training identity", ASSIGN), ("github identity", FEDERATE)]:
        assert result.can(action, where[resource]), f"{action} on the {resource}"  # ... holds it all again
    assert set(result.runs_as) == {"person", "identity", "endpoint-identity", "github-identity"}
    for holding in result.holdings:  # Contributor still cannot assign roles
        assert not any(holding.permission.allows(action) for action in ROLE_ASSIGNMENT_RIGHTS)


def test_the_key_off_and_on_differ_only_in_that_role_and_scope(stacks) -> None:
    def assignments(run: Run) -> set[tuple[str, str, str]]:
        names = {res.outputs["principalId"]: res.name for res in run.of_type("UserAssignedIdentity")}
        where = {value: key for key, value in ids(run).items()}
        return {(names[ra.inputs["principalId"]], ra.inputs["roleDefinitionId"].rsplit("/", 1)[1],
                 where[ra.inputs["scope"]]) for ra in run.of_type("RoleAssignment")}

    off, on = assignments(stacks["off"]), assignments(stacks["on"])
    assert off - on == {("identity", roles.AZUREML_DATA_SCIENTIST, "workspace")}
    assert on - off == {("identity", roles.CONTRIBUTOR, "resource group")}
    assert stacks["on"].named("uai-contributor-rg") and stacks["off"].named("uai-data-scientist-workspace")
