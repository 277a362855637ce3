"""The stack-outputs loader: explicit file, then STACK_OUTPUTS_FILE, then a (fake) `pulumi` CLI on PATH."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import datetime as dt

from infra.outputs import (
    ENV_VAR,
    OPTIONAL_KEYS,
    PROJECT_DIR,
    REQUIRED_KEYS,
    StackOutputs,
    StackOutputsError,
    latest_time,
    load_stack_outputs,
    parse_arm_time,
)

OUTPUTS = {
    "subscription_id": "00000000-1111-2222-3333-444444444444",
    "tenant_id": "99999999-8888-7777-6666-555555555555",
    "resource_group_name": "rg-ftphi-dev-1a2b3c4d",
    "location": "eastus",
    "workspace_name": "mlw-ftphi-0badc0de",
    "storage_account_name": "stftphi0badc0de",
    "container_registry_name": "crftphi0badc0de",
    "key_vault_name": "kv-ftphi-0badc0de",
    "compute_name": "gpu-a100-986f",
    "compute_vm_size": "Standard_NC24ads_A100_v4",
    "compute_max_nodes": 2,
    "uai_name": "id-ftphi-0badc0de",
    "uai_resource_id": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id",
    "uai_client_id": "aaaaaaaa-0000-0000-0000-000000000001",
    "uai_principal_id": "aaaaaaaa-0000-0000-0000-000000000002",
    "endpoint_uai_name": "id-ftphi-endpoint-0badc0de",
    "endpoint_uai_resource_id": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.ManagedIdentity/"
                                "userAssignedIdentities/id-ftphi-endpoint-0badc0de",
    "endpoint_uai_client_id": "bbbbbbbb-0000-0000-0000-000000000001",
    "endpoint_uai_principal_id": "bbbbbbbb-0000-0000-0000-000000000002",
    "foundry_project_name": "proj-ftphi-0badc0de",
}


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def fake_pulumi(bin_dir: Path, *, stdout: str = "", stderr: str = "", code: int = 0, name: str = "dev") -> Path:
    """A `pulumi` on PATH that answers `stack output --json` and `stack --show-name`, and logs its argv."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "pulumi"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        with open({str(bin_dir / "calls.jsonl")!r}, "a") as log:
            log.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
        if sys.argv[1:] == ["stack", "--show-name"]:
            print({name!r})
            sys.exit(0)
        sys.stdout.write({stdout!r})
        sys.stderr.write({stderr!r})
        sys.exit({code})
    """))
    script.chmod(0o755)
    return script


def calls(bin_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (bin_dir / "calls.jsonl").read_text().splitlines()]


def env_with(bin_dir: Path, **extra: str) -> dict[str, str]:
    return {"PATH": str(bin_dir), **extra}


# ---------------------------------------------------------------- the three sources, in order


def test_from_an_explicit_file(tmp_path) -> None:
    path = write_json(tmp_path / "out.json", OUTPUTS)
    loaded = load_stack_outputs(outputs_file=path, env={ENV_VAR: "/does/not/matter.json", "PATH": ""})
    assert loaded.workspace_name == "mlw-ftphi-0badc0de"
    assert loaded.compute_max_nodes == 2 and isinstance(loaded.compute_max_nodes, int)
    assert loaded.source == str(path)
    assert loaded.foundry_project_name == "proj-ftphi-0badc0de"
    assert loaded.endpoint_uai_client_id == OUTPUTS["endpoint_uai_client_id"]
    assert set(loaded.as_dict()) == set(REQUIRED_KEYS)


def test_from_the_environment_variable(tmp_path) -> None:
    path = write_json(tmp_path / "env.json", OUTPUTS)
    bin_dir = tmp_path / "bin"
    fake_pulumi(bin_dir, stdout="{}")
    loaded = load_stack_outputs(env=env_with(bin_dir, **{ENV_VAR: str(path)}))
    assert loaded.source == str(path)
    assert not (bin_dir / "calls.jsonl").exists()  # the CLI is not asked when the variable is set


def test_the_real_environment_is_the_default(tmp_path, monkeypatch) -> None:
    path = write_json(tmp_path / "env.json", OUTPUTS)
    monkeypatch.setenv(ENV_VAR, str(path))
    assert load_stack_outputs().key_vault_name == "kv-ftphi-0badc0de"


def test_from_a_pulumi_cli_on_path(tmp_path) -> None:
    bin_dir = tmp_path / "bin"
    fake_pulumi(bin_dir, stdout=json.dumps(OUTPUTS, indent=4))
    loaded = load_stack_outputs(env=env_with(bin_dir))
    assert loaded.uai_client_id == OUTPUTS["uai_client_id"]
    assert loaded.source == "pulumi stack output (the selected stack)"
    [call] = calls(bin_dir)
    assert call["argv"] == ["stack", "output", "--json"]
    assert Path(call["cwd"]) == PROJECT_DIR  # runs where Pulumi.yaml is, whatever the caller's directory


def test_a_named_stack_is_passed_to_the_cli(tmp_path) -> None:
    bin_dir = tmp_path / "bin"
    fake_pulumi(bin_dir, stdout=json.dumps(OUTPUTS))
    loaded = load_stack_outputs(stack="prod", env=env_with(bin_dir), cwd=tmp_path)
    assert loaded.source == "pulumi stack output (stack 'prod')"
    [call] = calls(bin_dir)
    assert call["argv"] == ["stack", "output", "--json", "--stack", "prod"]
    assert Path(call["cwd"]) == tmp_path


# ---------------------------------------------------------------- every error, with its message


def test_no_cli_on_path(tmp_path) -> None:
    with pytest.raises(StackOutputsError) as caught:
        load_stack_outputs(env={"PATH": str(tmp_path)})
    message = str(caught.value)
    assert "the Pulumi CLI is not on PATH" in message
    assert "--outputs-file" in message and ENV_VAR in message and "pulumi up" in message


def test_no_stack_selected(tmp_path) -> None:
    bin_dir = tmp_path / "bin"
    fake_pulumi(bin_dir, code=255, stderr="error: no stack selected; please use `pulumi stack select` to choose one\n")
    with pytest.raises(StackOutputsError) as caught:
        load_stack_outputs(env=env_with(bin_dir))
    message = str(caught.value)
    assert "failed for the selected stack (error: no stack selected;" in message
    assert "pulumi stack select NAME" in message and "pulumi stack init NAME" in message


def test_unknown_named_stack(tmp_path) -> None:
    bin_dir = tmp_path / "bin"
    fake_pulumi(bin_dir, code=255, stderr="error: no stack named 'qa' found\n")
    with pytest.raises(StackOutputsError, match=r"failed for stack 'qa' \(error: no stack named 'qa' found\)"):
        load_stack_outputs(stack="qa", env=env_with(bin_dir))


def test_empty_outputs_mean_not_deployed(tmp_path) -> None:
    bin_dir = tmp_path / "bin"
    fake_pulumi(bin_dir, stdout="{}\n", name="dev")
    with pytest.raises(StackOutputsError) as caught:
        load_stack_outputs(env=env_with(bin_dir))
    assert str(caught.value) == (
        "the selected stack 'dev' has no outputs: it has not been deployed yet. Run `pulumi up` first."
    )
    with pytest.raises(StackOutputsError, match=r"stack 'prod' has no outputs.*`pulumi up --stack prod` first"):
        load_stack_outputs(stack="prod", env=env_with(bin_dir))


def test_missing_keys_name_the_stack_the_keys_and_the_command(tmp_path) -> None:
    partial = {k: v for k, v in OUTPUTS.items() if k not in ("compute_name", "uai_client_id")}
    bin_dir = tmp_path / "bin"
    fake_pulumi(bin_dir, stdout=json.dumps(partial), name="staging")
    with pytest.raises(StackOutputsError) as caught:
        load_stack_outputs(env=env_with(bin_dir))
    message = str(caught.value)
    assert "the selected stack 'staging'" in message
    assert "lack compute_name, uai_client_id" in message
    assert "Run `pulumi up`" in message
    with pytest.raises(StackOutputsError, match=r"stack 'prod'.*lack compute_name, uai_client_id.*`pulumi up --stack prod`"):
        load_stack_outputs(stack="prod", env=env_with(bin_dir))


def test_missing_keys_in_a_file(tmp_path) -> None:
    path = write_json(tmp_path / "out.json", {**OUTPUTS, "workspace_name": ""})
    with pytest.raises(StackOutputsError, match=rf"from {path} lack workspace_name\. Run `pulumi up`"):
        load_stack_outputs(outputs_file=path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"is not valid JSON \(line 1: "),
        ("[1, 2]", r"holds a JSON list, not the object of stack outputs"),
        ("", r"lack subscription_id, tenant_id"),
    ],
)
def test_bad_json_in_a_file(tmp_path, text, message) -> None:
    path = tmp_path / "out.json"
    path.write_text(text)
    with pytest.raises(StackOutputsError, match=message):
        load_stack_outputs(outputs_file=path)


def test_bad_json_from_the_cli(tmp_path) -> None:
    bin_dir = tmp_path / "bin"
    fake_pulumi(bin_dir, stdout="warning: something\n{")
    with pytest.raises(StackOutputsError, match=r"pulumi stack output for the selected stack is not valid JSON"):
        load_stack_outputs(env=env_with(bin_dir))


def test_file_errors(tmp_path) -> None:
    with pytest.raises(StackOutputsError, match=r"does not exist\. Write it with `pulumi stack output --json > FILE`"):
        load_stack_outputs(outputs_file=tmp_path / "missing.json")
    with pytest.raises(StackOutputsError, match=rf"cannot read the stack outputs file {tmp_path} \(from {ENV_VAR}\)"):
        load_stack_outputs(env={ENV_VAR: str(tmp_path)})  # a directory
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xaf\x00\xff{")
    with pytest.raises(StackOutputsError, match=r"binary\.json \(from --outputs-file\) is not UTF-8 text"):
        load_stack_outputs(outputs_file=binary)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"compute_max_nodes": "two"}, r"compute_max_nodes .* is 'two', not a whole number"),
        ({"uai_client_id": "[secret]"}, r"no plain value for uai_client_id"),
        ({"workspace_name": {"name": "x"}}, r"no plain value for workspace_name"),
    ],
)
def test_values_of_the_wrong_shape(tmp_path, change, message) -> None:
    path = write_json(tmp_path / "out.json", {**OUTPUTS, **change})
    with pytest.raises(StackOutputsError, match=message):
        load_stack_outputs(outputs_file=path)


def test_a_cli_that_cannot_run(tmp_path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "pulumi"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    with pytest.raises(StackOutputsError, match=r"cannot run the Pulumi CLI at .*pulumi"):
        load_stack_outputs(env=env_with(bin_dir))


def test_errors_are_user_errors_with_a_nonzero_exit() -> None:
    from common.cli import UserError

    assert issubclass(StackOutputsError, UserError)
    assert StackOutputsError("x").exit_code != 0


def test_the_loader_never_imports_pulumi() -> None:
    """Training and deployment import it; `--help` must stay fast and work without the infra extra."""
    code = "import sys, infra.outputs; print(sorted(m for m in sys.modules if m.split('.')[0] in ('pulumi', 'pulumi_azure_native')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.stdout.strip() == "[]"


def test_round_trip_through_as_dict() -> None:
    loaded = StackOutputs.from_mapping(OUTPUTS, source="test")
    assert StackOutputs.from_mapping(loaded.as_dict(), source="again").as_dict() == loaded.as_dict()


# ---------------------------------------------------------------- typed optional outputs


def test_optional_outputs_are_typed_fields() -> None:
    loaded = StackOutputs.from_mapping({
        **OUTPUTS, "compute_priority": "LowPriority", "github_uai_client_id": "cccccccc-0000-0000-0000-000000000001",
        "role_assignments_created_on": "2026-11-29T04:40:13.2553541Z", "unknown_future_key": 7,
    })
    assert loaded.compute_priority == "LowPriority"
    assert loaded.github_uai_client_id == "cccccccc-0000-0000-0000-000000000001"
    assert loaded.role_assignments_created_on == dt.datetime(2026, 11, 29, 4, 40, 13, 255354, tzinfo=dt.timezone.utc)
    assert loaded.budget_name is None and loaded.workspace_resource_id is None  # not exported: None
    assert not hasattr(loaded, "extra")  # an output no field names is ignored, not kept aside to be looked up
    assert not set(OPTIONAL_KEYS) & set(REQUIRED_KEYS)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("role_assignments_created_on", "yesterday", r"role_assignments_created_on .* 'yesterday' is not an ISO 8601"),
    ("github_uai_client_id", "[secret]", r"no plain value for github_uai_client_id"),
    ("foundry_hub_name", ["a"], r"no plain value for foundry_hub_name"),
])
def test_optional_outputs_of_the_wrong_shape(key, value, message) -> None:
    with pytest.raises(StackOutputsError, match=message):
        StackOutputs.from_mapping({**OUTPUTS, key: value}, source="test")


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-29T04:40:13.2553541Z", dt.datetime(2026, 11, 29, 4, 40, 13, 255354, tzinfo=dt.timezone.utc)),
    ("2026-11-29T04:40:13Z", dt.datetime(2026, 11, 29, 4, 40, 13, tzinfo=dt.timezone.utc)),
    ("2026-11-29T05:40:13.5+01:00", dt.datetime(2026, 11, 29, 4, 40, 13, 500000, tzinfo=dt.timezone.utc)),
    ("2026-11-29T04:40:13", dt.datetime(2026, 11, 29, 4, 40, 13, tzinfo=dt.timezone.utc)),
])
def test_arm_timestamps(text, expected) -> None:
    assert parse_arm_time(text) == expected


def test_latest_time_compares_instants_not_strings() -> None:
    assert latest_time(["2026-11-29T04:40:13.9Z", "2026-11-29T05:00:00+01:00", "2026-11-29T04:40:14Z"]) == (
        "2026-11-29T04:40:14Z")
