"""Where the offline (`--target local`) path keeps its outputs, and how later steps find them.

The paths themselves are common/runs.py's (it owns every runs/ path); this module keeps the
names training and deployment call. Nothing downstream asks a person for a path: deployment
reads `latest_model_dir()`.
"""
from __future__ import annotations

from pathlib import Path

from common import runs
from common.cli import UserError
from common.files import write_atomic

REPO_ROOT = runs.REPO_ROOT
runs_dir = runs.root
jobs_dir = runs.jobs_dir
job_dir = runs.job_dir
tiny_model_dir = runs.tiny_model_dir
serve_dir = runs.serve_dir


def mlflow_tracking_uri() -> str:
    return runs.mlruns_dir().resolve().as_uri()


def record_latest(job_name: str) -> None:
    """Mark `job_name` as the latest completed local job (atomic replace)."""
    write_atomic(runs.latest_job_file(), job_name + "\n")


def latest_model_dir() -> Path:
    """The `model` output of the latest completed local job, or a clear error saying how to make one."""
    pointer = runs.latest_job_file()
    hint = "Train one first: `python -m training.submit --target local --model tiny`."
    if not pointer.is_file():
        raise UserError(f"no completed local training job under {jobs_dir()}. {hint}")
    model_dir = job_dir(pointer.read_text(encoding="utf-8").strip()) / "model"
    if not (model_dir / "MLmodel").is_file():
        raise UserError(f"the latest local job's model folder {model_dir} is missing or incomplete. {hint}")
    return model_dir
