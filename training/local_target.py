"""`--target local`: the same trainer, with the same arguments, in a subprocess on this machine.

The command is `python -m training.trainer.fine_tune` with every resolved setting (as the Azure
job's `python -m trainer.fine_tune`); the model folder also holds the trainer's summary.json.

Layout (see training.local_runs): runs/jobs/<job>/train.log, runs/jobs/<job>/model (the named
`model` output, an MLflow model), MLflow tracking in runs/mlruns. Only a job that finished
with a complete model becomes LATEST, which is what `deployment.deploy --target local` uses.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Mapping, Sequence

from common.cli import UserError, say
from training import local_runs
from training.discovery import EXPERIMENT_NAME
from training.hyperparams import TRAINER_MODULE, trainer_argv

REPO_ROOT = Path(__file__).resolve().parents[1]

TAIL_LINES = 25


def new_job_name() -> str:
    return f"local-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def tiny_model() -> Path:
    """The tiny offline model, built on first use (a few seconds)."""
    path = local_runs.tiny_model_dir()
    if (path / "config.json").is_file():
        return path
    from training.tiny_model import build_tiny_model

    say(f"==> building the tiny Phi-3 model at {path} (first use)")
    return Path(build_tiny_model(path))


def trainer_command(model: str, train_file: Path, eval_file: Path, output_dir: Path, hyperparameters: Mapping[str, object]) -> list[str]:
    return [
        sys.executable,
        "-m",
        TRAINER_MODULE,
        "--model_name_or_path",
        model,
        "--train_file",
        str(train_file),
        "--eval_file",
        str(eval_file),
        "--output_dir",
        str(output_dir),
        *trainer_argv(hyperparameters),
    ]


def run_local(
    model: str,
    train_file: Path,
    eval_file: Path,
    hyperparameters: Mapping[str, object],
    *,
    job_name: str | None = None,
    stream: bool = True,
    extra_env: Mapping[str, str] | None = None,
) -> tuple[str, Path]:
    """Train in a subprocess; returns (job name, model dir). Failure: UserError with the log's tail."""
    job_name = job_name or new_job_name()
    job = local_runs.job_dir(job_name)
    if job.exists():
        raise UserError(f"local job folder {job} already exists; pick another job name.")
    job.mkdir(parents=True)
    model_dir = job / "model"
    log_path = job / "train.log"
    command = trainer_command(model, Path(train_file).resolve(), Path(eval_file).resolve(), model_dir, hyperparameters)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": local_runs.mlflow_tracking_uri(),
        "MLFLOW_EXPERIMENT_NAME": EXPERIMENT_NAME,
        "PYTHONUNBUFFERED": "1",
        # the job runs in its own folder: `-m training.trainer.fine_tune` needs this repository on the path
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
        # the Arrow cache of the local JSON files is run output: keep it under runs/, not in ~/.cache
        "HF_DATASETS_CACHE": os.environ.get("HF_DATASETS_CACHE") or str(local_runs.runs_dir() / "cache" / "datasets"),
        **(extra_env or {}),
    }
    (job / "command.txt").write_text(" ".join(_shown(command)) + "\n", encoding="utf-8")
    say(f"==> local job {job_name}: training in {job} (log: {log_path})")
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    started = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            command, cwd=job, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                tail.append(line.rstrip("\n"))
                if stream:
                    sys.stderr.write(line)
                    sys.stderr.flush()
            code = process.wait()
        except KeyboardInterrupt:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            shutil.rmtree(model_dir, ignore_errors=True)
            say(f"stopped local job {job_name}; nothing was recorded as LATEST (log: {log_path})")
            raise
    elapsed = time.perf_counter() - started
    if code != 0 or not (model_dir / "MLmodel").is_file():
        shutil.rmtree(model_dir, ignore_errors=True)
        reason = f"exited with code {code}" if code != 0 else f"finished but left no MLflow model in {model_dir}"
        last = "\n".join(f"    {line}" for line in tail) or "    (no output)"
        raise UserError(
            f"local training job {job_name} failed: the trainer {reason} after {elapsed:.0f}s. "
            f"Last lines of {log_path}:\n{last}"
        )
    local_runs.record_latest(job_name)
    say(f"<== local job {job_name} completed in {elapsed:.0f}s; model: {model_dir}")
    return job_name, model_dir


def _shown(command: Sequence[str]) -> list[str]:
    import shlex

    return [shlex.quote(part) for part in command]
