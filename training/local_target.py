"""`--target local`: the same trainer, with the same arguments, in a subprocess on this machine.

The command is `python -m training.trainer.fine_tune` with every resolved setting (as the Azure
job's `python -m trainer.fine_tune`); the model folder also holds the trainer's summary.json.

Layout (see training.local_runs): one folder per run key (training.run_key),
runs/jobs/<key>/train.log, runs/jobs/<key>/checkpoints/ (deleted once the model is saved),
runs/jobs/<key>/model (the named `model` output, an MLflow model), MLflow tracking in
runs/mlruns. Started again with the same arguments, a stopped run continues in its folder from
its newest complete checkpoint; a completed one is not overwritten (the new run goes to
runs/jobs/<key>.2, .3 ...). Only a job that finished with a complete model becomes LATEST,
which is what `deployment.deploy --target local` uses.

Ctrl-C or SIGTERM asks the trainer to finish its step and save a checkpoint, and waits for it
(however long the save takes); a second Ctrl-C kills it at once.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from common.cli import UserError, say
from training import local_runs
from training.discovery import EXPERIMENT_NAME
from training.hyperparams import TRAINER_MODULE, trainer_argv
from training.trainer import checkpoints

REPO_ROOT = Path(__file__).resolve().parents[1]

TAIL_LINES = 25
CHECKPOINTS = "checkpoints"
STOPPED_CODES = (128 + signal.SIGTERM, 128 + signal.SIGINT)


def tiny_model() -> Path:
    """The tiny offline model, built on first use (a few seconds)."""
    path = local_runs.tiny_model_dir()
    if (path / "config.json").is_file():
        return path
    from training.tiny_model import build_tiny_model

    say(f"==> building the tiny Phi-3 model at {path} (first use)")
    return Path(build_tiny_model(path))


def trainer_command(model: str, train_file: Path, eval_file: Path, output_dir: Path, hyperparameters: Mapping[str, object],
                    resume: Sequence[str] = ()) -> list[str]:
    """The trainer's command line; `resume`: its checkpoint flags (--checkpoint_dir, --run_key, ...)."""
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
        *resume,
        *trainer_argv(hyperparameters),
    ]


# ---------------------------------------------------------------- which folder: the run key's

def _completed(job: Path) -> bool:
    return (job / "model" / "MLmodel").is_file()


@dataclass(frozen=True)
class RunFolder:
    name: str
    """The job name (LATEST holds it): the key, or key.N for a later run of a completed key."""
    resume_step: int | None
    note: str
    """One line saying what happens: a new run, or resuming from which step."""


def run_folder(key: str, resume: str = "auto", fresh: bool = False) -> RunFolder:
    """The folder for this key: the newest unfinished one is resumed (`auto`); a completed one is never reused.

    `never` and `fresh` (an explicit --resume-from) take a new folder and leave the unfinished one as it was.
    """
    names = [key] + [f"{key}.{n}" for n in range(2, 1000)]
    existing = [name for name in names if local_runs.job_dir(name).is_dir()]
    newest = existing[-1] if existing else None
    next_name = names[len(existing)]
    if newest is None:
        return RunFolder(key, None, f"==> new local run {key}")
    folder = local_runs.job_dir(newest)
    if _completed(folder):
        return RunFolder(next_name, None, f"==> run {newest} completed before (model in {folder / 'model'}); "
                                          f"starting a new run {next_name}")
    if resume == "never" or fresh:
        why = "--resume never" if resume == "never" else "--resume-from"
        return RunFolder(next_name, None, f"==> starting over in run {next_name} ({why}); the unfinished run {newest} "
                                          f"is left as it was (delete {folder} to free its checkpoints)")
    found = checkpoints.newest(folder / CHECKPOINTS)
    if found is None:
        return RunFolder(newest, None, f"==> run {newest} has no complete checkpoint: starting it from step 0")
    return RunFolder(newest, found.step, f"==> resuming run {newest} from step {found.step} ({found.path})")


def resume_source(value: str, key: str, force: bool) -> Path:
    """--resume-from locally: a job name under runs/jobs or a folder, holding a complete checkpoint of this run
    (a different key or world size is refused unless --force)."""
    path = Path(value).expanduser()
    if not path.exists() and local_runs.job_dir(value).is_dir():
        path = local_runs.job_dir(value)
    if (path / CHECKPOINTS).is_dir():
        path = path / CHECKPOINTS
    found = checkpoints.newest(path) if path.is_dir() else None
    if found is None:
        raise UserError(f"--resume-from {value}: no complete checkpoint there (a local job name, its checkpoints "
                        "folder, or one checkpoint-<step> folder with its completion marker).")
    theirs = found.info.get("run_key")
    if theirs and theirs != key and not force:
        raise UserError(f"--resume-from {value}: its checkpoint belongs to run {theirs}, and this run is {key} (the "
                        "model, data or settings differ). Pass --force to start from it anyway.")
    if int(found.info.get("world_size") or 1) != 1 and not force:
        raise UserError(f"--resume-from {value}: its checkpoint was written by {found.info['world_size']} processes; "
                        "a local run has 1, so the data order would not continue. Pass --force to start from it anyway.")
    say(f"==> starting from {found.path} (step {found.step})")
    return path.resolve()


# ---------------------------------------------------------------- running it

def run_local(
    model: str,
    train_file: Path,
    eval_file: Path,
    hyperparameters: Mapping[str, object],
    *,
    key: str,
    resume: str = "auto",
    resume_from: str | None = None,
    force: bool = False,
    stream: bool = True,
    extra_env: Mapping[str, str] | None = None,
) -> tuple[str, Path]:
    """Train in a subprocess in the key's run folder; returns (job name, model dir).

    Failure: UserError with the log's tail. Stopped (SIGTERM, Ctrl-C): UserError saying to run it again.
    """
    source = resume_source(resume_from, key, force) if resume_from else None
    folder = run_folder(key, resume, fresh=source is not None)
    say(folder.note)
    job = local_runs.job_dir(folder.name)
    job.mkdir(parents=True, exist_ok=True)
    model_dir = job / "model"
    shutil.rmtree(model_dir, ignore_errors=True)  # an unfinished run's model folder is never a model
    log_path = job / "train.log"
    flags = ["--checkpoint_dir", str(job / CHECKPOINTS), "--run_key", key]
    flags += ["--resume_from", str(source)] if source else []
    flags += ["--resume_force", "true"] if force else []
    command = trainer_command(model, Path(train_file).resolve(), Path(eval_file).resolve(), model_dir,
                              hyperparameters, flags)
    (job / "command.txt").write_text(" ".join(_shown(command)) + "\n", encoding="utf-8")
    say(f"==> local job {folder.name}: training in {job} (log: {log_path})")
    started = time.perf_counter()
    code, tail, stopping = _train(command, job, log_path, _environment(extra_env), stream)
    elapsed = time.perf_counter() - started
    if code in STOPPED_CODES or (stopping and code != 0):
        shutil.rmtree(model_dir, ignore_errors=True)
        newest = checkpoints.newest(job / CHECKPOINTS)
        where = f"checkpoint at step {newest.step}" if newest else "no checkpoint yet"
        raise UserError(f"local job {folder.name} stopped after {elapsed:.0f}s ({where}); nothing was recorded as "
                        "LATEST. Resume with the same command.", exit_code=code if code in STOPPED_CODES else 130)
    if code != 0 or not (model_dir / "MLmodel").is_file():
        shutil.rmtree(model_dir, ignore_errors=True)
        reason = f"exited with code {code}" if code != 0 else f"finished but left no MLflow model in {model_dir}"
        last = "\n".join(f"    {line}" for line in tail) or "    (no output)"
        raise UserError(
            f"local training job {folder.name} failed: the trainer {reason} after {elapsed:.0f}s. "
            f"Last lines of {log_path}:\n{last}"
        )
    local_runs.record_latest(folder.name)
    say(f"<== local job {folder.name} completed in {elapsed:.0f}s; model: {model_dir}")
    return folder.name, model_dir


def _environment(extra_env: Mapping[str, str] | None) -> dict[str, str]:
    return {
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


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM to this process stops the trainer as Ctrl-C does (in the main thread; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train(command: list[str], job: Path, log_path: Path, env: Mapping[str, str],
           stream: bool) -> tuple[int, deque[str], bool]:
    """Run and follow the trainer; the first interrupt asks it to stop (and waits), a second kills it.

    Returns (exit code, the log's last lines, whether a stop was asked).
    """
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    stopping = False
    with log_path.open("a", encoding="utf-8") as log, _sigterm_as_interrupt():
        process = subprocess.Popen(command, cwd=job, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        assert process.stdout is not None
        while True:
            try:
                for line in process.stdout:
                    log.write(line)
                    tail.append(line.rstrip("\n"))
                    if stream:
                        sys.stderr.write(line)
                        sys.stderr.flush()
                return process.wait(), tail, stopping
            except KeyboardInterrupt:
                if stopping:
                    process.kill()
                    process.wait()
                    raise
                stopping = True
                say("==> stopping: the trainer finishes its step and saves a checkpoint (Ctrl-C again kills it now)")
                process.send_signal(signal.SIGTERM)


def _shown(command: Sequence[str]) -> list[str]:
    import shlex

    return [shlex.quote(part) for part in command]
