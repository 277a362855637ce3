"""Find the fine-tuning job deployment should use, so nobody copies a job name by hand.

Every job `training.submit` creates lands in the experiment `finetune-phi` and carries the
tag `finetune-phi: sft` (command job, named output `model`) or `finetune-phi: registry`
(the registry pipeline, named output `trained_model`). Deployment asks for the newest
completed one. No Azure import here: the MLClient is passed in.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

from common.cli import UserError

EXPERIMENT_NAME = "finetune-phi"
TAG_KEY = "finetune-phi"
RECIPE_SFT = "sft"
RECIPE_REGISTRY = "registry"
OUTPUT_NAMES: dict[str, str] = {RECIPE_SFT: "model", RECIPE_REGISTRY: "trained_model"}
"""The named job output that holds the MLflow model, per recipe."""
JOB_TYPES: dict[str, str] = {RECIPE_SFT: "command", RECIPE_REGISTRY: "pipeline"}

COMPLETED = "Completed"
_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def job_tags(recipe: str) -> dict[str, str]:
    """The discovery tag every submitted job carries (merged into its other tags)."""
    if recipe not in OUTPUT_NAMES:
        raise ValueError(f"unknown recipe {recipe!r}")
    return {TAG_KEY: recipe}


def _created_at(job: Any) -> datetime:
    created = getattr(getattr(job, "creation_context", None), "created_at", None)
    if isinstance(created, str):
        try:
            created = datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            return _EPOCH
    if not isinstance(created, datetime):
        return _EPOCH
    return created if created.tzinfo else created.replace(tzinfo=timezone.utc)


def _ours(job: Any, experiment_name: str) -> bool:
    if job is None:  # the SDK yields None for jobs it cannot parse
        return False
    recipe = (getattr(job, "tags", None) or {}).get(TAG_KEY)
    if recipe not in OUTPUT_NAMES or getattr(job, "experiment_name", None) != experiment_name:
        return False
    kind = getattr(job, "type", None)  # guards against a pipeline's steps, should they inherit the tag
    return kind is None or kind == JOB_TYPES[recipe]


def finetune_jobs(jobs: Iterable[Any], experiment_name: str = EXPERIMENT_NAME) -> list[Any]:
    """This project's jobs (tag + experiment + job type), newest first."""
    return sorted((job for job in jobs if _ours(job, experiment_name)), key=_created_at, reverse=True)


def latest_completed_job(ml_client: Any, experiment_name: str = EXPERIMENT_NAME) -> tuple[str, str]:
    """(job name, model output name) of the newest completed fine-tuning job in the workspace."""
    from common.azure import azure_errors

    with azure_errors("listing the workspace's jobs"):
        jobs = list(ml_client.jobs.list())
    ours = finetune_jobs(jobs, experiment_name)
    for job in ours:
        if getattr(job, "status", None) == COMPLETED:
            return job.name, OUTPUT_NAMES[job.tags[TAG_KEY]]
    if ours:
        newest = ours[0]
        raise UserError(
            f"no completed fine-tuning job in experiment {experiment_name!r} yet; the newest, {newest.name}, "
            f"is {getattr(newest, 'status', 'in an unknown state')}. Follow it with `az ml job stream -n {newest.name}` "
            "and deploy when it completes, or pass --job NAME."
        )
    raise UserError(
        f"no fine-tuning job found in experiment {experiment_name!r} of this workspace. "
        "Submit one with `python -m training.submit`, or pass --job NAME / --model NAME:VERSION."
    )
