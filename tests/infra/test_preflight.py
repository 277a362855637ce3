"""infra.preflight against a fake ARM at the HTTP edge (arm_fake.py): real azure-core pipeline, ARM's answer shape."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from arm_fake import FakeArm, FakeCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from builtin_roles import BY_NAME

import common.azure
from common.cli import UserError
from infra import preflight
from infra.outputs import StackOutputs
from infra.permissions import Permission, PermissionsReader, allows, matches
from infra.preflight import PreflightError, require

NOW = dt.datetime(2026, 11, 29, 5, 0, 0, tzinfo=dt.timezone.utc)
SCIENTIST, CONTRIBUTOR, OWNER = BY_NAME["AzureML Data Scientist"], BY_NAME["Contributor"], BY_NAME["Owner"]
MI_OPERATOR, UAA = BY_NAME["Managed Identity Operator"], BY_NAME["User Access Administrator"]


@pytest.fixture
def example(repo_root: Path) -> dict:
    return json.loads((repo_root / "docs/examples/stack-outputs.json").read_text())


@pytest.fixture
def outputs(example: dict) -> StackOutputs:
    return StackOutputs.from_mapping(example, source="example")


def scopes(outputs: StackOutputs) -> dict[str, str]:
    rg = f"/subscriptions/{outputs.subscription_id}/resourceGroups/{outputs.resource_group_name}"
    return {"rg": rg, "workspace": f"{rg}/providers/Microsoft.MachineLearningServices/workspaces/{outputs.workspace_name}",
            "endpoint_uai": outputs.endpoint_uai_resource_id, "subscription": f"/subscriptions/{outputs.subscription_id}"}


def run_require(outputs: StackOutputs, purpose: str, arm: FakeArm, **kwargs):
    sleeps: list[float] = []
    verdict = require(outputs, purpose, FakeCredential(), transport=arm, now=kwargs.pop("now", lambda: NOW),
                      sleep=sleeps.append, env={}, **kwargs)
    return verdict, sleeps


# ---------------------------------------------------------------- ARM's wildcard rules


@pytest.mark.parametrize(("pattern", "action", "expected"), [
    ("*", "Microsoft.Storage/storageAccounts/write", True),
    ("*/read", "Microsoft.Storage/storageAccounts/read", True),
    ("*/read", "Microsoft.Storage/storageAccounts/write", False),
    ("Microsoft.Authorization/*/Write", "microsoft.authorization/roleAssignments/write", True),  # case-insensitive
    ("Microsoft.MachineLearningServices/workspaces/*/delete", "Microsoft.MachineLearningServices/workspaces/delete", True),
    ("Microsoft.MachineLearningServices/workspaces/*/write", "Microsoft.MachineLearningServices/workspaces/jobs/write", True),
    ("Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
     "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action", True),
    ("Microsoft.MachineLearningServices/workspaces/computes/*/write",
     "Microsoft.MachineLearningServices/workspaces/jobs/write", False),
    ("Microsoft.Storage/storageAccounts/read", "Microsoft.Storage/storageAccounts/readx", False),
])
def test_arm_wildcards(pattern: str, action: str, expected: bool) -> None:
    assert matches(pattern, action) is expected


def test_not_actions_subtract_only_within_their_own_block() -> None:
    """Contributor's notActions do not cancel what User Access Administrator grants: ARM unions the blocks."""
    action = "Microsoft.Authorization/roleAssignments/write"
    assert not allows([CONTRIBUTOR], action)
    assert allows([CONTRIBUTOR, UAA], action)
    assert not allows([Permission(actions=("*",), not_actions=("Microsoft.Authorization/*",))], action)
    assert allows([Permission(data_actions=("Microsoft.Storage/*",))], "Microsoft.Storage/x/blobs/read", data=True)
    assert not allows([Permission(actions=("*",))], "Microsoft.Storage/x/blobs/read", data=True)  # actions never grant data


# ---------------------------------------------------------------- submit and deploy


def test_a_data_scientist_may_submit(outputs: StackOutputs) -> None:
    s = scopes(outputs)
    arm = FakeArm({s["workspace"]: [SCIENTIST]})
    verdict, sleeps = run_require(outputs, "submit", arm)
    assert verdict.ok and not verdict.missing and sleeps == []
    [request] = arm.requests  # one scope, one call
    assert request.url == (f"https://management.azure.com{s['workspace']}/providers/Microsoft.Authorization/"
                           "permissions?api-version=2022-04-01")


def test_a_data_scientist_alone_may_not_deploy(outputs: StackOutputs) -> None:
    """The fact the old docs got wrong: the endpoint identity must be assignable by the caller."""
    s = scopes(outputs)
    arm = FakeArm({s["workspace"]: [SCIENTIST], s["endpoint_uai"]: [SCIENTIST]})
    with pytest.raises(PreflightError) as caught:
        run_require(outputs, "deploy", arm)
    message = str(caught.value)
    assert message.startswith("`python -m deployment.deploy` would be refused: on identity id-ftphi-endpoint-1a2b3c4d")
    assert "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action" in message
    assert "Managed Identity Operator on that identity" in message and "LinkedAuthorizationFailed" in message
    assert "workspace" not in message.split("you lack")[1].split(";")[0]  # the workspace rights are fine
    assert "python -m infra.preflight --for deploy" in message and "\n" not in message


def test_group_granted_and_custom_roles_count(outputs: StackOutputs) -> None:
    """ARM's answer already holds every role that applies: through a group, inherited, or custom."""
    s = scopes(outputs)
    custom = Permission(actions=("Microsoft.MachineLearningServices/workspaces/*",),
                        not_actions=("Microsoft.MachineLearningServices/workspaces/delete",))
    arm = FakeArm({s["workspace"]: [custom, BY_NAME["Reader"]], s["endpoint_uai"]: [MI_OPERATOR, BY_NAME["Reader"]]})
    verdict, _ = run_require(outputs, "deploy", arm)
    assert verdict.ok


def test_pages_are_followed(outputs: StackOutputs) -> None:
    s = scopes(outputs)
    arm = FakeArm({s["workspace"]: [[BY_NAME["Reader"]], [SCIENTIST]]})  # two pages, chained by nextLink
    verdict, _ = run_require(outputs, "submit", arm)
    assert verdict.ok and len(arm.requests) == 2 and "page=1" in arm.requests[1].url


def test_a_503_is_retried_by_azure_core(outputs: StackOutputs) -> None:
    s = scopes(outputs)
    arm = FakeArm({s["workspace"]: (503, [SCIENTIST])})
    verdict, _ = run_require(outputs, "submit", arm)
    assert verdict.ok and len(arm.requests) == 2


def test_teardown_warns_about_the_purge_only(outputs: StackOutputs, capsys) -> None:
    s = scopes(outputs)
    verdict, _ = run_require(outputs, "teardown", FakeArm({s["workspace"]: [SCIENTIST]}))
    assert verdict.ok
    assert "teardown --purge-workspace also needs Microsoft.MachineLearningServices/workspaces/delete" in (
        capsys.readouterr().err)


# ---------------------------------------------------------------- pulumi up


def test_pulumi_up_as_contributor_is_refused_with_the_role_to_ask_for(outputs: StackOutputs) -> None:
    s = scopes(outputs)
    with pytest.raises(PreflightError) as caught:
        run_require(outputs, "up", FakeArm({s["rg"]: [CONTRIBUTOR]}))
    message = str(caught.value)
    assert "you lack Microsoft.Authorization/roleAssignments/write" in message
    assert ("Owner, or Contributor plus User Access Administrator or Role Based Access Control Administrator"
            in message)
    verdict, _ = run_require(outputs, "up", FakeArm({s["rg"]: [CONTRIBUTOR, UAA]}))
    assert verdict.ok
    verdict, _ = run_require(outputs, "up", FakeArm({s["rg"]: [OWNER]}))
    assert verdict.ok


def test_first_pulumi_up_is_checked_on_the_subscription(outputs: StackOutputs, tmp_path: Path, capsys) -> None:
    s = scopes(outputs)
    arm = FakeArm({s["subscription"]: [CONTRIBUTOR]})
    with pytest.raises(PreflightError, match="missing rights for up"):
        preflight.main(["--outputs-file", str(tmp_path / "none.json"), "--for", "up",
                        "--subscription", outputs.subscription_id], credential=FakeCredential(), transport=arm)
    out = capsys.readouterr().out
    assert out.startswith("up: MISSING RIGHTS")
    assert f"on subscription {outputs.subscription_id} you lack Microsoft.Authorization/roleAssignments/write" in out
    assert "Microsoft.Resources/subscriptions/resourceGroups/write" not in out  # Contributor has that


# ---------------------------------------------------------------- what cannot be checked, and sign-in


def test_a_caller_who_may_not_read_permissions_is_warned_not_stopped(outputs: StackOutputs, capsys) -> None:
    s = scopes(outputs)
    verdict, _ = run_require(outputs, "submit", FakeArm({s["workspace"]: 403}))
    assert verdict.ok and verdict.unchecked
    assert "could not check your permissions on workspace" in capsys.readouterr().err


def test_a_missing_workspace_is_one_message(outputs: StackOutputs) -> None:
    with pytest.raises(PreflightError, match=r"workspace mlw-finetune-phi-dev-1a2b3c4d does not exist .*pulumi up"):
        run_require(outputs, "submit", FakeArm({}))


def test_not_signed_in(outputs: StackOutputs) -> None:
    s = scopes(outputs)
    credential = FakeCredential(fail=lambda: ClientAuthenticationError("DefaultAzureCredential failed"))
    with pytest.raises(PreflightError, match=r"not signed in to Azure .*az login"):
        require(outputs, "submit", credential, transport=FakeArm({s["workspace"]: [SCIENTIST]}), env={},
                now=lambda: NOW, sleep=lambda s: None)


def test_the_switch_turns_it_off(outputs: StackOutputs, capsys) -> None:
    arm = FakeArm({})
    assert require(outputs, "deploy", FakeCredential(), transport=arm, env={"FINETUNE_PHI_PREFLIGHT": "off"}) is None
    assert arm.requests == [] and "preflight: skipped" in capsys.readouterr().err


def test_the_reader_raises_what_azure_core_raises(outputs: StackOutputs) -> None:
    reader = PermissionsReader(FakeCredential(), FakeArm({}))
    with pytest.raises(HttpResponseError) as caught:
        reader.read(scopes(outputs)["workspace"])
    assert caught.value.status_code == 404 and "ResourceNotFound" in str(caught.value)


# ---------------------------------------------------------------- role propagation after `pulumi up`


def test_fresh_roles_are_waited_for_with_progress(example: dict, capsys) -> None:
    outputs = StackOutputs.from_mapping({**example, "role_assignments_created_on": "2026-11-29T04:59:30.1234567Z"})
    clock = {"now": NOW}

    def sleep(seconds: float) -> None:
        clock["now"] += dt.timedelta(seconds=seconds)

    s = scopes(outputs)
    verdict = require(outputs, "submit", FakeCredential(), transport=FakeArm({s["workspace"]: [SCIENTIST]}),
                      now=lambda: clock["now"], sleep=sleep, env={})
    assert verdict.ok
    assert clock["now"] - outputs.role_assignments_created_on >= preflight.SETTLE  # waited the two minutes out
    assert clock["now"] - NOW < dt.timedelta(seconds=91)  # and no longer
    err = capsys.readouterr().err
    assert "the stack's role assignments were created 30 s ago; waiting 90 s more" in err


def test_old_roles_are_not_waited_for(example: dict) -> None:
    outputs = StackOutputs.from_mapping({**example, "role_assignments_created_on": "2026-11-28T12:00:00Z"})
    verdict, sleeps = run_require(outputs, "submit", FakeArm({scopes(outputs)["workspace"]: [SCIENTIST]}))
    assert verdict.ok and sleeps == []


def test_a_right_missing_on_a_young_stack_is_said_to_be_propagating(example: dict) -> None:
    outputs = StackOutputs.from_mapping({**example, "role_assignments_created_on": "2026-11-29T04:57:00Z"})
    s = scopes(outputs)
    with pytest.raises(PreflightError) as caught:
        run_require(outputs, "deploy", FakeArm({s["workspace"]: [SCIENTIST], s["endpoint_uai"]: []}))
    assert "roles are still propagating; retry in 7 minutes" in str(caught.value)
    # ten minutes on, the same answer is a missing role, not propagation
    with pytest.raises(PreflightError) as caught:
        run_require(outputs, "deploy", FakeArm({s["workspace"]: [SCIENTIST], s["endpoint_uai"]: []}),
                    now=lambda: NOW + dt.timedelta(minutes=10))
    assert "propagating" not in str(caught.value) and "Managed Identity Operator" in str(caught.value)


def test_a_403_from_the_sdk_on_a_young_stack_says_propagating(example: dict) -> None:
    from common.azure import azure_errors

    # The SDK-error hint reads the real clock, so the stack's age is built from it too (3 min: past
    # the preflight's 2-minute wait, inside Azure's 10 minutes of propagation).
    real_now = dt.datetime.now(dt.timezone.utc)
    outputs = StackOutputs.from_mapping({**example, "role_assignments_created_on":
                                         (real_now - dt.timedelta(minutes=3)).isoformat()})
    run_require(outputs, "submit", FakeArm({scopes(outputs)["workspace"]: [SCIENTIST]}), now=lambda: real_now)
    error = HttpResponseError(message="(AuthorizationFailed) The client does not have authorization")
    error.status_code = 403
    with pytest.raises(UserError, match=r"roles are still propagating; retry in [67] minutes"):
        with azure_errors("pulling the image", outputs.role_assignments_created_on):
            raise error
    # the hint comes from the outputs given, never from a module's memory of an earlier call
    with pytest.raises(UserError) as caught:
        with azure_errors("pulling the image"):
            raise error
    assert "propagating" not in str(caught.value) and "python -m infra.preflight" in str(caught.value)


# ---------------------------------------------------------------- wired into submit and deploy


class Untouchable:
    """An MLClient that fails the test if anything is asked of it (nothing may bill before the preflight)."""

    def __getattr__(self, name: str):
        raise AssertionError(f"ml_client.{name} was used before the preflight passed")


def _arm_for(monkeypatch: pytest.MonkeyPatch, arm: FakeArm) -> None:
    monkeypatch.setenv("FINETUNE_PHI_PREFLIGHT", "on")
    monkeypatch.setattr(preflight, "PermissionsReader", lambda credential, transport=None: PermissionsReader(
        FakeCredential(), arm))


@pytest.mark.slow
def test_submit_stops_before_anything_bills(outputs, example, sample_data_dir, tmp_path, monkeypatch) -> None:
    from training import submit

    arm = FakeArm({scopes(outputs)["workspace"]: [BY_NAME["Reader"]]})
    _arm_for(monkeypatch, arm)
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(tmp_path / "runs"))
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(example))
    with pytest.raises(PreflightError, match=r"training.submit` would be refused: .*jobs/write.*AzureML Data Scientist"):
        submit.main(["--outputs-file", str(path), "--data", str(sample_data_dir)], ml_client=Untouchable(),
                    credential=FakeCredential())
    assert arm.requests, "submit did not run the preflight"


def test_deploy_stops_before_anything_bills(outputs, example, tmp_path, monkeypatch) -> None:
    from deployment import deploy

    s = scopes(outputs)
    arm = FakeArm({s["workspace"]: [SCIENTIST], s["endpoint_uai"]: [BY_NAME["Reader"]]})
    _arm_for(monkeypatch, arm)
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr("common.azure.make_ml_client", lambda outputs, credential=None: Untouchable())
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(example))
    with pytest.raises(PreflightError, match=r"Managed Identity Operator"):
        deploy.main(["--outputs-file", str(path), "--model", "phi3-finetuned:1"])
    assert len(arm.requests) == 2


@pytest.mark.slow
def test_dry_runs_never_ask(example, tmp_path, monkeypatch, capsys) -> None:
    from deployment import deploy

    arm = FakeArm({})
    _arm_for(monkeypatch, arm)
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(tmp_path / "runs"))
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(example))
    assert deploy.main(["--outputs-file", str(path), "--dry-run", "--model", "phi3-finetuned:1"]) == 0
    assert arm.requests == []


# ---------------------------------------------------------------- the MLClient's retry policy, set once


def test_the_ml_client_carries_the_retry_policy(outputs: StackOutputs) -> None:
    client = common.azure.make_ml_client(outputs, credential=FakeCredential())
    configs = [value._config for name, value in vars(client).items()
               if name.startswith("_service_client") and hasattr(value, "_config")]
    assert configs, "no service clients found on the MLClient"
    for config in configs:
        policy = config.retry_policy
        assert (policy.total_retries, policy.backoff_factor, policy.backoff_max) == (8, 1.0, 60)


# ---------------------------------------------------------------- the command line


def test_the_cli_checks_submit_deploy_and_teardown_by_default(outputs, example, tmp_path, capsys) -> None:
    s = scopes(outputs)
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(example))
    arm = FakeArm({s["workspace"]: [SCIENTIST], s["endpoint_uai"]: [MI_OPERATOR]})
    assert preflight.main(["--outputs-file", str(path)], credential=FakeCredential(), transport=arm) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if not line.startswith(" ")] == [
        "submit: ok", "deploy: ok", "teardown: ok"]
    assert "warning: teardown --purge-workspace also needs" in out


def test_up_without_a_stack_needs_the_subscription(tmp_path, monkeypatch) -> None:
    """One message that names the missing --subscription, not the outputs (or the Pulumi CLI) it could not read."""
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    from common.cli import UserError

    with pytest.raises(UserError, match="pass --subscription ID") as missing:
        preflight.main(["--outputs-file", str(tmp_path / "none.json"), "--for", "up"],
                       credential=FakeCredential(), transport=FakeArm({}))
    assert "pulumi" not in str(missing.value).lower() and "\n" not in str(missing.value)


def test_help_is_instant_and_imports_no_sdk() -> None:
    import subprocess
    import sys

    code = ("import sys, runpy; sys.argv = ['x', '--help']\n"
            "try:\n    runpy.run_module('infra.preflight', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('azure', 'pulumi')), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--for {submit,deploy,teardown,up}" in done.stdout
    assert done.stderr.strip().endswith("[]")


def test_an_unreachable_arm_is_a_warning_after_azure_cores_retries(outputs: StackOutputs, monkeypatch) -> None:
    from azure.core.exceptions import ServiceRequestError

    class Down(FakeArm):
        def send(self, request, **kwargs):
            self.requests.append(request)
            raise ServiceRequestError("Name or service not known")

    monkeypatch.setitem(common.azure.RETRY, "retry_total", 2)  # the shared policy, made quick for the test
    monkeypatch.setitem(common.azure.RETRY, "retry_backoff_factor", 0)
    arm = Down({})
    verdict = preflight.evaluate("submit", outputs, PermissionsReader(FakeCredential(), arm))
    assert verdict.ok and "cannot reach ARM" in verdict.unchecked[0]
    assert len(arm.requests) == 3  # azure-core's RetryPolicy from common.azure.RETRY: 1 + 2 retries
