"""Quota arithmetic, latest-job discovery, and the CLI's error messages and exit codes."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from common.cli import UserError
from fakes.inputs import write_data, write_stack_outputs
from fakes.ml_client import FakeMLClient
from fakes.quota import A100, a100_usages, default_sizes, usage
from training import discovery, quota, submit


# ---------------------------------------------------------------- quota


def test_quota_reads_the_sdks_camelcase_usage_entities(capsys: pytest.CaptureFixture[str]) -> None:
    vm = quota.vm_info(A100, default_sizes())
    quota.check_quota(a100_usages(used=24, limit=48), vm, 1, "eastus")
    err = capsys.readouterr().err
    assert "24/48 vCPUs used; job needs 24" in err
    with pytest.raises(UserError) as failure:
        quota.check_quota(a100_usages(used=0, limit=12), vm, 1, "eastus")
    assert "allows 12 vCPUs" in str(failure.value) and "eastus" in str(failure.value)


def test_quota_ignores_workspace_level_entries() -> None:
    vm = quota.vm_info(A100, default_sizes())
    family = "standardNCADSA100v4Family"
    label = "Standard NCADSA100v4 Family Cluster Dedicated vCPUs"
    # the workspace entry's limit is not the subscription's: only the subscription-level 0 counts
    usages = [usage(family, label, 0, 100, workspace="ws"), usage(family, label, 0, 0)]
    with pytest.raises(UserError, match="allows 0 vCPUs"):
        quota.check_quota(usages, vm, 1, "eastus")


def test_quota_busy_family_only_warns(capsys: pytest.CaptureFixture[str]) -> None:
    vm = quota.vm_info(A100, default_sizes())
    quota.check_quota(a100_usages(used=40, limit=48), vm, 1, "eastus")
    assert "will queue" in capsys.readouterr().err


def test_quota_regional_total_is_checked_too() -> None:
    vm = quota.vm_info(A100, default_sizes())
    usages = [usage("standardNCADSA100v4Family", "Standard NCADSA100v4 Family Cluster Dedicated vCPUs", 0, 48),
              usage("totalCores", "Total Cluster Dedicated Regional vCPUs", 0, 10)]
    with pytest.raises(UserError, match="Total Cluster Dedicated Regional vCPUs"):
        quota.check_quota(usages, vm, 1, "eastus")


def test_quota_family_found_by_its_display_name_too() -> None:
    """Usage entries may carry the display name as their value (the REST reference's sample does)."""
    vm = quota.vm_info(A100, default_sizes())
    label = "Standard NCADSA100v4 Family Cluster Dedicated vCPUs"
    with pytest.raises(UserError, match="allows 0 vCPUs"):
        quota.check_quota([usage(label, label, 0, 0)], vm, 1, "eastus")


def test_unknown_vm_size_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="Standard_Nope is not offered"):
        quota.vm_info("Standard_Nope", default_sizes())
    assert quota.family_display("standardNCADSA100v4Family") == "Standard NCADSA100v4 Family Cluster Dedicated vCPUs"


# ---------------------------------------------------------------- discovery


def _job(name: str, recipe: str | None, status: str, minute: int, experiment: str = "finetune-phi",
         kind: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        name=name,
        type=kind or ("pipeline" if recipe == "registry" else "command"),
        status=status,
        experiment_name=experiment,
        tags={"finetune-phi": recipe} if recipe else {},
        creation_context=SimpleNamespace(created_at=datetime(2026, 11, 1, 12, minute, tzinfo=timezone.utc)),
    )


def test_latest_completed_job_picks_newest_completed_of_ours() -> None:
    fake = FakeMLClient()
    fake.jobs.store = [
        _job("old-sft", "sft", "Completed", 1),
        _job("new-registry", "registry", "Completed", 5),
        _job("running", "sft", "Running", 9),
        _job("someone-elses", None, "Completed", 10),
        _job("other-experiment", "sft", "Completed", 11, experiment="other"),
        _job("a-pipeline-step", "registry", "Completed", 12, kind="command"),
        None,  # the SDK yields None for jobs it cannot parse
    ]
    assert discovery.latest_completed_job(fake) == ("new-registry", "trained_model")
    fake.jobs.store = fake.jobs.store[:1] + fake.jobs.store[2:]
    assert discovery.latest_completed_job(fake) == ("old-sft", "model")
    assert fake.names() == ["jobs.list", "jobs.list"]


def test_latest_completed_job_errors_say_what_to_do() -> None:
    fake = FakeMLClient()
    with pytest.raises(UserError, match="python -m training.submit"):
        discovery.latest_completed_job(fake)
    fake.jobs.store = [_job("still-going", "sft", "Running", 1)]
    with pytest.raises(UserError, match="still-going, is Running"):
        discovery.latest_completed_job(fake)


# ---------------------------------------------------------------- CLI errors (exit code + one message)


def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FINETUNE_PHI_RUNS": str(tmp_path / "runs"), "PATH": "/usr/bin:/bin"}
    env.pop("STACK_OUTPUTS_FILE", None)
    return subprocess.run([sys.executable, "-m", "training.submit", *args], capture_output=True, text=True,
                          env=env, timeout=60, cwd=tmp_path)


def test_no_stack_is_one_actionable_error(tmp_path: Path) -> None:
    done = _cli(["--dry-run", "--data", str(write_data(tmp_path / "data"))], tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert "--outputs-file" in done.stderr and "pulumi" in done.stderr.lower()


def test_missing_data_names_the_prepare_command(tmp_path: Path) -> None:
    outputs = write_stack_outputs(tmp_path / "outputs.json")
    done = _cli(["--outputs-file", str(outputs), "--dry-run"], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"python -m training.data --source hf --out {tmp_path / 'runs' / 'data'}" in done.stderr
    done = _cli(["--target", "local", "--data", str(tmp_path / "nowhere")], tmp_path)
    assert done.returncode == 1
    assert f"python -m training.data --source sample --out {tmp_path / 'nowhere'}" in done.stderr


def test_data_pointing_at_a_file_names_the_folder(tmp_path: Path) -> None:
    outputs = write_stack_outputs(tmp_path / "outputs.json")
    train = write_data(tmp_path / "data") / "train.jsonl"
    done = _cli(["--outputs-file", str(outputs), "--dry-run", "--data", str(train)], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "is a file" in done.stderr and f"perhaps {tmp_path / 'data'}" in done.stderr


def test_incomplete_stack_outputs_name_the_missing_keys(tmp_path: Path) -> None:
    outputs = write_stack_outputs(tmp_path / "outputs.json", compute_name="")
    done = _cli(["--outputs-file", str(outputs), "--dry-run", "--data", str(write_data(tmp_path / "data"))], tmp_path)
    assert done.returncode == 1 and "compute_name" in done.stderr and "pulumi up" in done.stderr


def test_registry_recipe_is_azure_only(tmp_path: Path) -> None:
    done = _cli(["--target", "local", "--recipe", "registry", "--data", str(write_data(tmp_path / "data"))], tmp_path)
    assert done.returncode == 1 and "only on Azure" in done.stderr


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "-1"], "argument --epochs: must be a finite number in (0, 1000], got -1"),
    (["--epochs", "1e400"], "argument --epochs: must be a finite number in (0, 1000], got 1e400"),
    (["--epochs", "1e9"], "argument --epochs: must be a finite number in (0, 1000], got 1e9"),
    (["--learning-rate", "inf"], "argument --learning-rate/--learning_rate: must be a finite number in (0, 1], got inf"),
    (["--learning-rate", "nan"], "argument --learning-rate/--learning_rate: must be a finite number in (0, 1], got nan"),
    (["--lora-target-modules", ""], "argument --lora-target-modules/--lora_target_modules: expected all-linear or "
                                    "module names such as qkv_proj,o_proj, got ''"),
    (["--lora-target-modules", "qkv_proj,,o_proj"], "expected all-linear or module names"),
    (["--max-steps", "0"], "argument --max-steps/--max_steps: must be a whole number in [1, 10,000,000] or -1, got 0"),
    (["--max-steps", "1e9"], "argument --max-steps/--max_steps: must be a whole number in [1, 10,000,000] or -1, got '1e9'"),
    (["--warmup-ratio", "1.5"], "argument --warmup-ratio/--warmup_ratio: must be a finite number in [0, 1), got 1.5"),
    (["--lora-dropout", "1"], "argument --lora-dropout/--lora_dropout: must be a finite number in [0, 1), got 1"),
    (["--lora-r=-inf"], "argument --lora-r/--lora_r: must be a whole number in [1, 4096], got '-inf'"),
    (["--weight-decay=-inf"], "argument --weight-decay/--weight_decay: must be a finite number in [0, 1], got -inf"),
    (["--checkpoint-minutes", "nan"], "must be a finite number in [0, 1440], got nan"),
])
def test_values_the_trainer_refuses_are_refused_before_any_job(tmp_path: Path, flags: list[str], message: str,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """#25: NaN, +-inf, absurd sizes and empty lists end in one line and exit 2, before anything is built or runs."""
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(tmp_path / "runs"))
    outputs = write_stack_outputs(tmp_path / "outputs.json")
    data = write_data(tmp_path / "data")
    for target in (["--outputs-file", str(outputs), "--dry-run"], ["--target", "local"]):
        with pytest.raises(SystemExit) as exit_:
            submit.main([*target, "--data", str(data), *flags])
        out, err = capsys.readouterr()
        assert exit_.value.code == 2 and out == ""
        (line,) = err.splitlines()  # one line: no usage dump
        assert message in line and line.endswith("(see --help)")
    assert not (tmp_path / "runs").exists()  # nothing built, staged or started


def test_values_in_range_pass_to_the_job(tmp_path: Path) -> None:
    outputs = write_stack_outputs(tmp_path / "outputs.json")
    done = _cli(["--outputs-file", str(outputs), "--dry-run", "--data", str(write_data(tmp_path / "data")),
                 "--epochs", "2", "--max-steps", "5"], tmp_path)
    assert done.returncode == 0 and "--epochs 2" in done.stdout and "--max_steps 5" in done.stdout


@pytest.mark.parametrize("flags", [["--learning-rate", "inf"], ["--epochs", "1e400"], ["--epochs", "1e9"],
                                   ["--lora-target-modules", ""]])
def test_the_cli_refuses_impossible_values_in_one_line(tmp_path: Path, flags: list[str]) -> None:
    """The command a user types (local target, no dry run): one line, exit 2, no training started."""
    done = _cli(["--target", "local", "--data", str(write_data(tmp_path / "data")), *flags], tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("python -m training.submit: error: argument ") and flags[0] in line
    assert not (tmp_path / "runs").exists()
