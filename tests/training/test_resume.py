"""Training that survives a stop: the real trainer on the tiny model, stopped by SIGTERM and started again.

Each test stops a run where it happens to be when the signal lands; what is asserted does not
depend on where: the resumed run ends with the weights of an uninterrupted run of the same seed.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from training.trainer import checkpoints

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5  # CPU, fp32, same seed: the resumed run repeats the same operations on the same data
# The test recipe's few CPU steps, spelled as submit's flags (submit has no --config); a loss line every step
SUBMIT_FLAGS = ["--method", "full", "--learning-rate", "3e-3", "--max-steps", "6", "--max-length", "256",
                "--per-device-train-batch-size", "4", "--per-device-eval-batch-size", "8",
                "--gradient-checkpointing", "false", "--warmup-ratio", "0", "--logging-steps", "1"]


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(model_dir / "model" / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    worst = max(float((first[k].float() - second[k].float()).abs().max()) for k in first)
    assert worst <= TOLERANCE, f"largest weight difference {worst}"


def stop_after_losses(command: list[str], count: int, env: dict[str, str], cwd: Path,
                      signum: int = signal.SIGTERM) -> tuple[int, str]:
    """Start `command`, send `signum` once `count` loss lines have appeared, return (exit code, its output)."""
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, lines = 0, []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if "'loss':" in line:
            seen += 1
            if seen == count:
                process.send_signal(signum)
    return process.wait(timeout=600), "".join(lines)


# ---------------------------------------------------------------- submit --target local

def submit_env(runs: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_EXPERIMENT") and k != "MLFLOW_RUN_ID"}
    env.update(FINETUNE_PHI_RUNS=str(runs), PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    return env


def submit_command(tiny_model_dir: Path, sample_data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "training.submit", "--target", "local", "--model", str(tiny_model_dir),
            "--data", str(sample_data_dir), *SUBMIT_FLAGS]


def test_sigterm_midway_then_the_same_command_resumes_to_the_same_weights(tiny_model_dir, sample_data_dir,
                                                                         tmp_path: Path) -> None:
    import mlflow

    command = submit_command(tiny_model_dir, sample_data_dir)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    done = subprocess.run(command, env=submit_env(whole), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    key = done.stdout.strip()
    whole_model = whole / "jobs" / key / "model"

    # 1. stopped by SIGTERM midway: the step finishes, a complete checkpoint is saved, exit non-zero, no LATEST
    code, output = stop_after_losses(command, 2, submit_env(parts), tmp_path)
    job = parts / "jobs" / key
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert f"local job {key} stopped after" in output and "Resume with the same command." in output
    saved = checkpoints.newest(job / "checkpoints")
    assert saved is not None and 2 <= saved.step < 6 and saved.info["run_key"] == key
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= {p.name for p in saved.path.iterdir()}
    assert not (parts / "jobs" / "LATEST").exists() and not (job / "model").exists()

    # 2. as if the node then died while writing the next checkpoint: a folder without its marker
    torn = job / "checkpoints" / f"checkpoint-{saved.step + 1}"
    shutil.copytree(saved.path, torn)
    (torn / checkpoints.MARKER).unlink()

    # 3. the same command again: one line says it resumes and from which step; it ends where the whole run ended
    done = subprocess.run(command, env=submit_env(parts), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"==> resuming run {key} from step {saved.step} ({saved.path})" in done.stderr.splitlines()
    assert f"removing {torn}: it has no completion marker" in done.stderr
    assert done.stdout.strip() == key and (parts / "jobs" / "LATEST").read_text().strip() == key
    assert_same_weights(whole_model, job / "model")
    assert not list((job / "checkpoints").glob("checkpoint-*"))  # deleted once the model is saved

    first, resumed = (json.loads((m / "summary.json").read_text()) for m in (whole_model, job / "model"))
    assert resumed["eval_loss_before"] == pytest.approx(first["eval_loss_before"], abs=1e-6)  # the first segment's
    assert resumed["resumed_from_step"] == saved.step and resumed["global_steps"] == 6
    assert resumed["eval_loss_after"] == pytest.approx(first["eval_loss_after"], abs=1e-4)

    # one MLflow run across both segments, each step logged once: the resumed segment from step N+1
    client = mlflow.MlflowClient(tracking_uri=(parts / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("finetune-phi").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from"].endswith(f"(step {saved.step})")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, 7))


def test_a_nan_loss_fails_the_run_and_leaves_latest_alone(tiny_model_dir, sample_data_dir, tmp_path: Path) -> None:
    """A base whose weights are not finite: the loss is NaN, the trainer exits 1, and LATEST is untouched."""
    import torch
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    tensors = load_file(broken / "model.safetensors")
    name = next(k for k in tensors if k.endswith("mlp.down_proj.weight"))
    tensors[name][0, 0] = torch.nan
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    runs = tmp_path / "runs"
    (runs / "jobs").mkdir(parents=True)
    (runs / "jobs" / "LATEST").write_text("an-earlier-job\n")
    done = subprocess.run(submit_command(broken, sample_data_dir), env=submit_env(runs), cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 1 and "Traceback" not in done.stderr.split("Last lines of")[0]
    assert "error: the eval loss before training is nan: the model produces non-finite values" in done.stderr
    assert (runs / "jobs" / "LATEST").read_text() == "an-earlier-job\n"


# ---------------------------------------------------------------- the trainer itself

def trainer_args(fine_tune, tiny_model_dir: Path, sample_data_dir: Path, tmp_path: Path, *extra: str):
    return fine_tune.parse_args([
        "--config", "test", "--model_name_or_path", str(tiny_model_dir), "--train_file", str(sample_data_dir / "train.jsonl"),
        "--eval_file", str(sample_data_dir / "test.jsonl"), "--output_dir", str(tmp_path / "model"),
        "--checkpoint_dir", str(tmp_path / "checkpoints"), "--logging_steps", "1", *extra])


def poison_at(step: int):
    """A callback that makes the weights NaN at the end of `step`, as a diverging update would."""
    import torch
    from transformers import TrainerCallback

    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == step:
                with torch.no_grad():
                    next(p for p in model.parameters() if p.requires_grad).fill_(torch.nan)

    return Poison()


@pytest.mark.parametrize("minutes, caught_at", [("0", "the checkpoint of step 3"), ("20", "the loss of step 4")])
def test_no_checkpoint_is_kept_after_the_loss_became_nan(fine_tune, tiny_model_dir, sample_data_dir, tmp_path: Path,
                                                         minutes: str, caught_at: str) -> None:
    """Every step checkpointed (0 min): the NaN weights of step 3 are never marked complete. No interval save (20
    min): the NaN loss logged at step 4 stops the run. Either way: a TrainerError, and no checkpoint after step 2."""
    args = trainer_args(fine_tune, tiny_model_dir, sample_data_dir, tmp_path, "--checkpoint_minutes", minutes)
    record, stop = checkpoints.RunRecord("run", 1), checkpoints.StopRequest()
    saver = checkpoints.checkpoint_callback(args.checkpoint_dir, args.checkpoint_minutes, 5, record, stop)
    trainer, plan = fine_tune.build_trainer(args, str(tmp_path / "work"), callbacks=[poison_at(3), saver])
    with pytest.raises(fine_tune.TrainerError, match="training diverged: the loss became nan at step [34]"):
        fine_tune.evaluate_train_evaluate(trainer, args, plan, stop=stop, saver=saver, record=record)
    kept = [c.step for c in checkpoints.complete(args.checkpoint_dir)]
    assert kept == ([1, 2] if minutes == "0" else [])
    assert not checkpoints.incomplete(args.checkpoint_dir)  # the NaN checkpoint's folder is gone too
    assert saver.diverged[0] == (3 if minutes == "0" else 4), caught_at


def test_torchrun_two_processes_stopped_and_resumed_match_the_whole_run(tiny_model_dir, sample_data_dir,
                                                                         tmp_path: Path) -> None:
    """gloo on CPU: torchrun forwards SIGTERM to both ranks; they agree to stop after the same step, save (rank 0 the
    model and state, each rank its RNG file, the marker after a barrier), and the same command continues."""
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_EXPERIMENT") and k != "MLFLOW_RUN_ID"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", HF_DATASETS_CACHE=str(tmp_path / "cache"),
               PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO_ROOT))

    def command(name: str) -> list[str]:
        return [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "training.trainer.fine_tune",
                "--config", "test", "--device", "cpu", "--max_steps", "6", "--logging_steps", "1",
                "--model_name_or_path", str(tiny_model_dir), "--train_file", str(sample_data_dir / "train.jsonl"),
                "--eval_file", str(sample_data_dir / "test.jsonl"), "--output_dir", str(tmp_path / name / "model"),
                "--checkpoint_dir", str(tmp_path / name / "checkpoints"), "--run_key", "tiny-test"]

    whole = subprocess.run(command("whole"), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert whole.returncode == 0, whole.stderr[-3000:]
    code, output = stop_after_losses(command("parts"), 2, env, tmp_path)
    assert code != 0 and "resume with the same command" in output, output[-3000:]
    saved = checkpoints.newest(tmp_path / "parts" / "checkpoints")
    assert saved is not None and saved.step < 6 and saved.info["world_size"] == 2
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in saved.path.iterdir()}
    resumed = subprocess.run(command("parts"), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {saved.step}" in resumed.stderr
    assert_same_weights(tmp_path / "whole" / "model", tmp_path / "parts" / "model")
