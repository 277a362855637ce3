"""The Azure side of resuming: the `checkpoints` output, `--resume auto|never`, `--resume-from`, the cluster tier.

Dry runs are loaded with azure.ai.ml.load_job and validated offline; real submits run against the fake
MLClient (tests/fakes), whose job store answers the resume lookup.
"""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from common.cli import UserError
from fakes.inputs import write_data, write_stack_outputs
from fakes.ml_client import FakeMLClient
from fakes.quota import a100_usages, usage
from training import run_key, submit
from training.trainer import checkpoints


@pytest.fixture
def argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A stack and data of its own, and runs/ (the staged trainer) under the test's folder."""
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(tmp_path / "runs"))
    return ["--outputs-file", str(write_stack_outputs(tmp_path / "outputs.json")),
            "--data", str(write_data(tmp_path / "data"))]


def dry_run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[dict, str, str]:
    assert submit.main([*argv, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    return yaml.safe_load(out), out, err


def test_dry_run_shows_the_checkpoints_output_and_the_resume_wiring(argv, capsys) -> None:  # noqa: ANN001
    from azure.ai.ml import load_job

    spec, text, err = dry_run(argv, capsys)
    key = spec["tags"][run_key.TAG]
    assert spec["outputs"]["checkpoints"] == {"type": "uri_folder", "mode": "rw_mount"}
    assert spec["outputs"]["model"] == {"type": "uri_folder", "mode": "rw_mount"}  # deploy registers this one alone
    assert f"--checkpoint_dir ${{{{outputs.checkpoints}}}} --run_key {key} " in spec["command"]
    assert spec["tags"]["world-size"] == "1" and "resume_from" not in spec["inputs"]
    assert f"# Run key {key}; resume: looked up at submit time (the newest unfinished job tagged resume-key={key})." in text
    assert "resume: looked up at submit time" in err
    job = load_job(io.StringIO(text))
    assert job.outputs["checkpoints"].mode == "rw_mount"


def test_dry_run_resume_from_a_job_mounts_its_checkpoints(argv, capsys) -> None:  # noqa: ANN001
    from azure.ai.ml import load_job

    spec, text, _ = dry_run([*argv, "--resume-from", "finetune-phi-sft-20261201-0101-abcd"], capsys)
    assert spec["inputs"]["resume_from"] == {
        "type": "uri_folder", "path": "azureml://jobs/finetune-phi-sft-20261201-0101-abcd/outputs/checkpoints",
        "mode": "ro_mount"}
    assert "--resume_from ${{inputs.resume_from}}" in spec["command"] and "--resume_force" not in spec["command"]
    assert spec["tags"]["resumed_from"] == "finetune-phi-sft-20261201-0101-abcd"
    assert "run key and world size are checked at submit time" in text
    job = load_job(io.StringIO(text))
    assert job.inputs["resume_from"].path.endswith("/outputs/checkpoints")
    spec, _, _ = dry_run([*argv, "--resume", "never"], capsys)
    assert "resume_from" not in spec["inputs"] and "--resume_from" not in spec["command"]


def test_dry_run_resume_from_a_local_checkpoint_checks_its_key(argv, capsys, tmp_path) -> None:  # noqa: ANN001
    spec, _, _ = dry_run(argv, capsys)
    folder = tmp_path / "ckpts" / "checkpoint-12"
    folder.mkdir(parents=True)
    checkpoints.write_marker(folder, {"step": 12, "run_key": "someone-else", "world_size": 1})
    with pytest.raises(UserError, match="belongs to run someone-else.*--force"):
        submit.main([*argv, "--dry-run", "--resume-from", str(folder.parent)])
    spec, _, _ = dry_run([*argv, "--resume-from", str(folder.parent), "--force"], capsys)
    assert spec["inputs"]["resume_from"]["path"] == str(folder.parent.resolve())
    assert "--resume_force true" in spec["command"]


def test_registry_recipe_takes_no_resume_from(argv) -> None:  # noqa: ANN001
    with pytest.raises(UserError, match="--resume-from continues this repository's trainer"):
        submit.main([*argv, "--recipe", "registry", "--dry-run", "--resume-from", "some-job"])


# ---------------------------------------------------------------- real submits against the fake workspace

def submitted_spec(fake: FakeMLClient) -> dict:
    job = fake.jobs.submitted[-1]
    return {"inputs": job.inputs, "command": job.command, "tags": job.tags, "outputs": job.outputs}


def test_resume_auto_continues_the_newest_unfinished_job_of_the_same_run(argv, capsys) -> None:  # noqa: ANN001
    fake = FakeMLClient()
    assert submit.main([*argv, "--no-stream"], ml_client=fake) == 0
    first = fake.jobs.submitted[-1]
    key = first.tags[run_key.TAG]
    assert "resume_from" not in first.inputs and "resume: no earlier job of run" in capsys.readouterr().err

    fake.jobs.set_status(first.name, "Running")  # still running: a second job of the same run would bill twice
    with pytest.raises(UserError, match=f"job {first.name} of the same run .* is Running.*--resume never"):
        submit.main([*argv, "--no-stream"], ml_client=fake)

    fake.jobs.set_status(first.name, "Failed")  # preempted, node fault, timeout: continue from its checkpoints
    assert submit.main([*argv, "--no-stream"], ml_client=fake) == 0
    second = fake.jobs.submitted[-1]
    assert second.inputs["resume_from"].path == f"azureml://jobs/{first.name}/outputs/checkpoints"
    assert second.tags["resumed_from"] == first.name and second.tags[run_key.TAG] == key
    assert "--resume_from ${{inputs.resume_from}}" in second.command
    assert f"resume: from job {first.name}'s checkpoints (Failed, same run {key})" in capsys.readouterr().err

    fake.jobs.set_status(second.name, "Completed")  # a completed run: a new one, said so
    assert submit.main([*argv, "--no-stream"], ml_client=fake) == 0
    assert "resume_from" not in fake.jobs.submitted[-1].inputs
    assert f"job {second.name} of run {key} completed; starting a new run" in capsys.readouterr().err


def test_resume_from_a_job_refuses_another_key_or_world_size_unless_forced(argv) -> None:  # noqa: ANN001
    fake = FakeMLClient()
    assert submit.main([*argv, "--no-stream", "--epochs", "2"], ml_client=fake) == 0
    other = fake.jobs.submitted[-1]
    fake.jobs.set_status(other.name, "Canceled")
    with pytest.raises(UserError, match=f"job {other.name} belongs to run .*--force"):
        submit.main([*argv, "--no-stream", "--resume-from", other.name], ml_client=fake)
    assert submit.main([*argv, "--no-stream", "--resume-from", other.name, "--force"], ml_client=fake) == 0
    forced = fake.jobs.submitted[-1]
    assert "--resume_force true" in forced.command and forced.inputs["resume_from"].path.endswith(f"{other.name}/outputs/checkpoints")

    fake.jobs.set_status(forced.name, "Failed")
    other.tags["world-size"] = "2"  # as if it trained on two GPUs
    other.tags[run_key.TAG] = forced.tags[run_key.TAG]
    for job in fake.jobs.store:
        if job.name == other.name:
            job.tags = dict(other.tags)
    with pytest.raises(UserError, match="trained on 2 processes and this job has 1"):
        submit.main([*argv, "--no-stream", "--resume-from", other.name], ml_client=fake)
    with pytest.raises(UserError, match="no such job in this workspace"):
        submit.main([*argv, "--no-stream", "--resume-from", "no-such-job"], ml_client=fake)


def test_submit_prints_the_cluster_tier(tmp_path: Path, argv, capsys) -> None:  # noqa: ANN001
    assert submit.main([*argv, "--no-stream"], ml_client=FakeMLClient()) == 0
    assert "cluster tier: dedicated" in capsys.readouterr().err
    outputs = write_stack_outputs(tmp_path / "lp.json", compute_priority="LowPriority")
    lp = ["--outputs-file", str(outputs), "--data", str(tmp_path / "data"), "--no-stream"]
    fake = FakeMLClient(usages=a100_usages(used=0, limit=0)
                        + [usage("TotalLowPriorityCores", "Total Cluster LowPriority Regional vCPUs", 0, 48)])
    assert submit.main(lp, ml_client=fake) == 0
    err = capsys.readouterr().err
    assert "cluster tier: low priority (preemptible); checkpoints are on: every 20 min" in err
    assert "a preemption costs at most that much training" in err
    assert submit.main([*lp, "--dry-run", "--checkpoint-minutes", "10"]) == 0
    assert "# cluster tier: low priority (preemptible); checkpoints are on: every 10 min" in capsys.readouterr().out

