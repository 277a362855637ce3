"""`--target local`: the real trainer in a subprocess, on CPU, on the tiny model."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.cli import UserError
from training import local_runs, submit


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(tmp_path / "runs"))


@pytest.mark.slow
def test_local_target_trains_tiny_model_end_to_end(sample_data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--target", "local", "--model", "tiny", "--data", str(sample_data_dir),
            "--max-steps", "2", "--max-length", "256", "--per-device-train-batch-size", "2", "--logging-steps", "1"]
    assert submit.main(argv) == 0
    out, err = capsys.readouterr()
    job_name = out.strip()
    assert job_name.startswith("tiny-") and f"==> new local run {job_name}" in err  # the run key names the folder
    assert (local_runs.tiny_model_dir() / "config.json").is_file()  # built on first use
    job = local_runs.job_dir(job_name)
    log = (job / "train.log").read_text()
    assert log and log.splitlines()[-1] in err  # streamed to the terminal too
    command = (job / "command.txt").read_text()
    settings_file = Path(command.split("--config ", 1)[1].split()[0])  # the one settings file the run reads
    assert "max_steps: 2\n" in settings_file.read_text()
    assert f"--checkpoint_dir {job / 'checkpoints'} --run_key {job_name}" in command
    model_dir = local_runs.latest_model_dir()
    assert model_dir == job / "model"
    # the layout deployment relies on: MLflow model at the root, HF weights and tokenizer inside
    assert (model_dir / "MLmodel").is_file()
    assert (model_dir / "model" / "config.json").is_file()
    assert (model_dir / "components" / "tokenizer").is_dir()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoTokenizer.from_pretrained(model_dir / "components" / "tokenizer")
    assert AutoModelForCausalLM.from_pretrained(model_dir / "model").config.model_type == "phi3"
    assert Path(local_runs.mlflow_tracking_uri().removeprefix("file://")).is_dir()  # tracked locally
    assert any((local_runs.runs_dir() / "cache" / "datasets").iterdir())  # the Arrow cache is run output, not ~/.cache


@pytest.mark.slow
def test_local_failure_shows_the_log_tail_and_keeps_latest(tmp_path: Path, sample_data_dir: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    local_runs.record_latest("an-earlier-job")
    with pytest.raises(UserError) as err:
        submit.main(["--target", "local", "--model", str(model), "--data", str(sample_data_dir), "--max-steps", "1"])
    message = str(err.value)
    assert "failed" in message and "exited with code 1" in message
    assert f"error: cannot load the tokenizer from --model_name_or_path {model}" in message  # the trainer's own words
    assert "Traceback" not in message
    assert (local_runs.jobs_dir() / "LATEST").read_text().strip() == "an-earlier-job"
    (job,) = [p for p in local_runs.jobs_dir().iterdir() if p.is_dir()]
    assert not (job / "model").exists() and (job / "train.log").is_file()


def test_local_dry_run_prints_the_trainer_command(sample_data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert submit.main(["--target", "local", "--data", str(sample_data_dir), "--dry-run", "--epochs", "2"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    settings_file = local_runs.runs_dir() / "staged"
    assert f"-m training.trainer.fine_tune --config {settings_file}/trainer-" in out  # the file an Azure job reads
    assert f"/trainer/settings.yaml --model_name_or_path {local_runs.tiny_model_dir()}" in out
    assert "\nepochs: 2.0\n" in captured.err and "--epochs" not in out  # the dry run prints the settings file
    assert "--checkpoint_dir " in out and "--run_key tiny-" in out
    assert not local_runs.tiny_model_dir().exists()  # a dry run builds nothing
