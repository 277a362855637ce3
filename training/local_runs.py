"""Where the offline (`--target local`) path keeps its outputs, and how later steps find them.

runs/                      git-ignored
  models/tiny/             the tiny Phi-3 built on first use (`--model tiny`)
  mlruns/                  local MLflow tracking store
  cache/datasets/          the datasets library's Arrow cache of the local JSON files
  jobs/<job-name>/         one local training job: logs, checkpoints, and
  jobs/<job-name>/model/   the named `model` output (an MLflow transformers model)
  jobs/LATEST              the name of the last job that completed
  serve/                   the local endpoint's pid, port and log (deployment --target local)

Nothing downstream asks a person for a path: deployment reads `latest_model_dir()`.
"""
from __future__ import annotations

import os
from pathlib import Path

from common.cli import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]


def runs_dir() -> Path:
    """The root of all local run outputs (FINETUNE_PHI_RUNS overrides it, e.g. in tests)."""
    return Path(os.environ.get("FINETUNE_PHI_RUNS") or REPO_ROOT / "runs")


def jobs_dir() -> Path:
    return runs_dir() / "jobs"


def tiny_model_dir() -> Path:
    return runs_dir() / "models" / "tiny"


def mlflow_tracking_uri() -> str:
    return (runs_dir() / "mlruns").resolve().as_uri()


def serve_dir() -> Path:
    return runs_dir() / "serve"


def job_dir(job_name: str) -> Path:
    return jobs_dir() / job_name


def record_latest(job_name: str) -> None:
    """Mark `job_name` as the latest completed local job (atomic replace)."""
    pointer = jobs_dir() / "LATEST"
    pointer.parent.mkdir(parents=True, exist_ok=True)
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(job_name + "\n", encoding="utf-8")
    os.replace(tmp, pointer)


def latest_model_dir() -> Path:
    """The `model` output of the latest completed local job, or a clear error saying how to make one."""
    pointer = jobs_dir() / "LATEST"
    hint = "Train one first: `python -m training.submit --target local --model tiny`."
    if not pointer.is_file():
        raise UserError(f"no completed local training job under {jobs_dir()}. {hint}")
    model_dir = job_dir(pointer.read_text(encoding="utf-8").strip()) / "model"
    if not (model_dir / "MLmodel").is_file():
        raise UserError(f"the latest local job's model folder {model_dir} is missing or incomplete. {hint}")
    return model_dir
