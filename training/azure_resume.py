"""Which checkpoints an Azure ML job starts from: `--resume auto|never` and `--resume-from JOB_OR_PATH`.

Every SFT job writes its checkpoints to its named output `checkpoints` and carries the tags
`resume-key` (training.run_key) and `world-size`. A job requeued after a preemption finds its own
checkpoints there by itself. A new submit:

- `--resume auto` (default): the newest job of the project with the same key decides. Unfinished
  (failed, canceled): its `checkpoints` output is mounted as the input `resume_from`. Completed:
  a new run starts, and submit says so. Still queued or running: refused (two jobs of one run
  would bill twice). That lookup is a network call: the dry run says "resume: looked up at submit
  time".
- `--resume-from JOB`: that job's `checkpoints` output; `--resume-from PATH`: a local checkpoint
  folder, uploaded. A different key or world size is refused unless `--force`.
- `--resume never`: nothing is mounted.

The trainer prefers its own `checkpoints` output (a requeue) over `resume_from`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.cli import UserError, say
from training import run_key
from training.discovery import EXPERIMENT_NAME, finetune_jobs

WORLD_SIZE_TAG = "world-size"
RESUMED_FROM_TAG = "resumed_from"
UNFINISHED = ("Failed", "Canceled", "NotResponding", "Paused")
"""Job states whose checkpoints a new job may continue from; the others are running or completed."""
LOOKED_UP = "resume: looked up at submit time"


@dataclass(frozen=True)
class ResumePlan:
    input_path: str | None = None
    """What the job mounts as `resume_from` (azureml://jobs/<job>/outputs/checkpoints, or a local folder)."""
    resumed_from: str | None = None
    """The job name or folder, for the `resumed_from` tag."""
    force: bool = False
    note: str = ""


def checkpoints_of(job: str) -> str:
    return f"azureml://jobs/{job}/outputs/checkpoints"


def _check(what: str, tags: dict[str, Any], key: str, world_size: int, force: bool) -> None:
    """Refuse another run's key or world size unless --force."""
    theirs, their_size = tags.get(run_key.TAG), tags.get(WORLD_SIZE_TAG)
    if force:
        return
    if theirs and theirs != key:
        raise UserError(f"{what} belongs to run {theirs}, and this submit is run {key} (the model, data or settings "
                        "differ). Pass --force to start from its checkpoint anyway, or drop --resume-from.")
    if their_size and int(their_size) != world_size:
        raise UserError(f"{what} trained on {their_size} processes and this job has {world_size} (nodes x GPUs): the "
                        "data order would not continue where it stopped. Pass --force to start from it anyway, or "
                        "submit with the same --instance-count on the same cluster.")


def _local_folder(path: Path, key: str, world_size: int, force: bool) -> ResumePlan:
    from training.trainer import checkpoints

    found = checkpoints.newest(path)
    if found is None:
        raise UserError(f"--resume-from {path}: no complete checkpoint there (a checkpoint-<step> folder with its "
                        "completion marker, or a folder of them).")
    _check(f"checkpoint {found.path}", {run_key.TAG: found.info.get("run_key"),
                                        WORLD_SIZE_TAG: found.info.get("world_size")}, key, world_size, force)
    return ResumePlan(str(path.resolve()), str(path), force, f"resume: from {found.path} (step {found.step}), uploaded")


def offline(resume: str, resume_from: str | None, key: str, world_size: int, force: bool) -> ResumePlan:
    """The dry run's plan: no network (a job named by --resume-from is shown as an input, checked at submit)."""
    if resume_from and Path(resume_from).expanduser().exists():
        return _local_folder(Path(resume_from).expanduser(), key, world_size, force)
    if resume_from:
        return ResumePlan(checkpoints_of(resume_from), resume_from, force,
                          f"resume: from job {resume_from}'s checkpoints (its run key and world size are checked at "
                          "submit time)")
    if resume == "never":
        return ResumePlan(note="resume: never (a new run)")
    return ResumePlan(note=f"{LOOKED_UP} (the newest unfinished job tagged {run_key.TAG}={key})")


def lookup(ml_client: Any, resume: str, resume_from: str | None, key: str, world_size: int, force: bool,
           experiment: str = EXPERIMENT_NAME) -> ResumePlan:
    """The real submit's plan: the named job's tags, or the newest job of this key in the workspace."""
    from common.azure import azure_errors

    if resume_from and not Path(resume_from).expanduser().exists():
        from azure.core.exceptions import ResourceNotFoundError

        with azure_errors(f"reading job {resume_from}"):
            try:
                job = ml_client.jobs.get(resume_from)
            except ResourceNotFoundError:
                raise UserError(f"--resume-from {resume_from}: no such job in this workspace (nor a local folder).") from None
        _check(f"job {resume_from}", dict(job.tags or {}), key, world_size, force)
        return ResumePlan(checkpoints_of(resume_from), resume_from, force,
                          f"resume: from job {resume_from}'s checkpoints ({job.status})")
    if resume_from or resume == "never":
        return offline(resume, resume_from, key, world_size, force)
    with azure_errors("listing the workspace's jobs (looking for a run to resume)"):
        jobs = list(ml_client.jobs.list())
    same = [j for j in finetune_jobs(jobs, experiment) if (j.tags or {}).get(run_key.TAG) == key]
    if not same:
        return ResumePlan(note=f"resume: no earlier job of run {key}; a new run")
    newest = same[0]
    if newest.status == "Completed":
        return ResumePlan(note=f"resume: job {newest.name} of run {key} completed; starting a new run")
    if newest.status not in UNFINISHED:
        raise UserError(f"job {newest.name} of the same run ({key}) is {newest.status}: it would continue from the "
                        f"same checkpoints. Follow it (`az ml job stream -n {newest.name}`), cancel it, or pass "
                        "--resume never to start another run beside it.")
    _check(f"job {newest.name}", dict(newest.tags or {}), key, world_size, force)
    return ResumePlan(checkpoints_of(newest.name), newest.name, force,
                      f"resume: from job {newest.name}'s checkpoints ({newest.status}, same run {key})")


def announce(plan: ResumePlan) -> None:
    say(f"    {plan.note}")
