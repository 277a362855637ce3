"""The deploy preflight's round-2 checks: the Foundry project's scope, the subscription call ARM does not
document, and the datastore rights deploy's uploads use. Against the fake ARM at the HTTP edge (arm_fake.py).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest
from arm_fake import FakeArm, FakeCredential
from builtin_roles import BY_NAME

from infra import preflight
from infra.outputs import StackOutputs
from infra.permissions import Permission, allows
from infra.preflight import PreflightError, needs, require

NOW = dt.datetime(2026, 12, 7, 5, 0, 0, tzinfo=dt.timezone.utc)
SCIENTIST, CONTRIBUTOR = BY_NAME["AzureML Data Scientist"], BY_NAME["Contributor"]
MI_OPERATOR, READER = BY_NAME["Managed Identity Operator"], BY_NAME["Reader"]
PROJECT = "proj-finetune-phi-dev-1a2b3c4d"
CONNECTIONS_WRITE = "Microsoft.MachineLearningServices/workspaces/connections/write"


@pytest.fixture
def outputs(repo_root: Path) -> StackOutputs:
    example = json.loads((repo_root / "docs/examples/stack-outputs.json").read_text())
    return dataclasses.replace(StackOutputs.from_mapping(example, source="example"), foundry_project_name=PROJECT)


def scopes(outputs: StackOutputs) -> dict[str, str]:
    rg = f"/subscriptions/{outputs.subscription_id}/resourceGroups/{outputs.resource_group_name}"
    ml = f"{rg}/providers/Microsoft.MachineLearningServices/workspaces"
    return {"workspace": f"{ml}/{outputs.workspace_name}", "project": f"{ml}/{PROJECT}",
            "endpoint_uai": outputs.endpoint_uai_resource_id, "subscription": f"/subscriptions/{outputs.subscription_id}"}


def check(outputs: StackOutputs, arm: FakeArm, **kwargs):
    return require(outputs, "deploy", FakeCredential(), transport=arm, now=lambda: NOW, sleep=lambda s: None,
                   env={}, **kwargs)


def test_rights_that_stop_at_the_ml_workspace_are_refused_before_anything_bills(outputs: StackOutputs) -> None:
    """The GitHub identity's case: Data Scientist on the workspace, nothing on the Foundry project."""
    s = scopes(outputs)
    arm = FakeArm({s["workspace"]: [SCIENTIST], s["endpoint_uai"]: [MI_OPERATOR], s["project"]: [READER]})
    with pytest.raises(PreflightError) as caught:
        check(outputs, arm, foundry=True)
    message = str(caught.value)
    assert f"on Foundry project {PROJECT} you lack {CONNECTIONS_WRITE}; ask for Azure AI Developer" in message
    assert "python -m infra.preflight --for deploy --foundry-connection" in message and "\n" not in message
    assert check(outputs, arm).ok  # without the flag the project is not asked about


def test_a_writer_on_the_project_passes(outputs: StackOutputs) -> None:
    s = scopes(outputs)
    arm = FakeArm({s["workspace"]: [SCIENTIST], s["endpoint_uai"]: [MI_OPERATOR], s["project"]: [SCIENTIST]})
    assert check(outputs, arm, foundry=True).ok
    asked = {request.url.split("/providers/Microsoft.Authorization")[0].split("azure.com")[1].lower()
             for request in arm.requests}
    assert s["project"].lower() in asked


def test_the_role_the_message_names_grants_the_action(outputs: StackOutputs) -> None:
    (need,) = [n for n in needs("deploy", outputs, foundry=True) if n.action == CONNECTIONS_WRITE]
    named = sorted((name for name in BY_NAME if name in need.grant), key=need.grant.index)
    assert named and all(allows([BY_NAME[name]], need.action) for name in named)
    assert not allows([READER], need.action)


def test_the_flag_without_a_project_in_the_outputs_is_one_message(outputs: StackOutputs) -> None:
    with pytest.raises(PreflightError, match=r"--foundry-connection needs a Foundry project.*enableFoundry"):
        check(dataclasses.replace(outputs, foundry_project_name=None), FakeArm({}), foundry=True)


def test_deploy_needs_the_datastore_rights_its_uploads_use(outputs: StackOutputs) -> None:
    s = scopes(outputs)
    narrow = Permission(actions=(
        "Microsoft.MachineLearningServices/workspaces/jobs/read",
        "Microsoft.MachineLearningServices/workspaces/models/versions/write",
        "Microsoft.MachineLearningServices/workspaces/environments/versions/write",
        "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/*",
    ))
    with pytest.raises(PreflightError) as caught:
        check(outputs, FakeArm({s["workspace"]: [narrow], s["endpoint_uai"]: [MI_OPERATOR]}))
    assert ("you lack Microsoft.MachineLearningServices/workspaces/datastores/listSecrets/action, "
            "Microsoft.MachineLearningServices/workspaces/data/versions/write") in str(caught.value)
    assert check(outputs, FakeArm({s["workspace"]: [SCIENTIST], s["endpoint_uai"]: [MI_OPERATOR]})).ok


@pytest.mark.parametrize("status", [400, 404])
def test_a_400_or_404_on_the_subscription_call_is_not_checked_not_a_missing_subscription(
        outputs: StackOutputs, tmp_path: Path, capsys, status: int) -> None:
    arm = FakeArm({scopes(outputs)["subscription"]: status})
    assert preflight.main(["--outputs-file", str(tmp_path / "none.json"), "--for", "up",
                           "--subscription", outputs.subscription_id], credential=FakeCredential(), transport=arm) == 0
    out = capsys.readouterr().out
    assert out.startswith("up: ok")
    assert f"not checked: subscription {outputs.subscription_id} (ARM answered {status}" in out
    assert "does not exist" not in out


def test_a_404_on_a_resource_group_still_says_it_does_not_exist(outputs: StackOutputs) -> None:
    with pytest.raises(PreflightError, match=r"workspace .* does not exist"):
        check(outputs, FakeArm({}))

