"""Every path under runs/, the git-ignored home of what the project's commands leave behind.

runs/                        (FINETUNE_PHI_RUNS overrides it, e.g. in tests)
  data/                      `training.data`'s split; data/test.jsonl is the default held-out set
  models/tiny/               the tiny Phi-3 built on first use (`--model tiny`)
  mlruns/                    local MLflow tracking store
  cache/datasets/            the datasets library's Arrow cache of the local JSON files
  staged/                    trainer code staged for an Azure ML job
  jobs/<key>/                a local training run (training.run_key): train.log, checkpoints/, model/ (MLflow)
  jobs/LATEST                the name of the last job that completed
  serve/                     the local endpoint: endpoint.json, server.log, eval-tags.json, .lock
  eval/                      every evaluation's replies and scores; eval/scores/ the gate's cache
  deploy/                    the serving image's staged build context
  smoke/                     the cloud smoke path: state.json, logs/, its Prompt flow home
  demo/                      the offline demo's own runs/ (data/, models/, jobs/, serve/, eval/ ... as above;
                             `python -m demo` sets FINETUNE_PHI_RUNS to it), logs/, its Prompt flow home and keyring
  bench/                     benchmark reports
  job-check/<job>/           `python -m infra.job_check`: a finished Azure ML job's download

Writers go through `common.files.write_atomic`: a reader never sees half a file.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "FINETUNE_PHI_RUNS"
REPO_ROOT = Path(__file__).resolve().parents[1]

def root() -> Path:
    """The root of all run outputs."""
    return Path(os.environ.get(ENV_VAR) or REPO_ROOT / "runs")


# -- training --------------------------------------------------------------------------------------


def data_dir() -> Path:
    return root() / "data"


def default_eval_file() -> Path:
    """The data's held-out split, where `training.data` and submit put it."""
    return data_dir() / "test.jsonl"


def tiny_model_dir() -> Path:
    return root() / "models" / "tiny"


def models_dir() -> Path:
    return root() / "models"


def mlruns_dir() -> Path:
    return root() / "mlruns"


def datasets_cache_dir() -> Path:
    return root() / "cache" / "datasets"


def staged_dir() -> Path:
    return root() / "staged"


def jobs_dir() -> Path:
    return root() / "jobs"


def job_dir(job_name: str) -> Path:
    return jobs_dir() / job_name


def latest_job_file() -> Path:
    """Holds the name of the last local job that completed."""
    return jobs_dir() / "LATEST"


# -- serving and evaluation ------------------------------------------------------------------------


def serve_dir() -> Path:
    return root() / "serve"


def serve_record() -> Path:
    """The running local endpoint: url, port, pid, model."""
    return serve_dir() / "endpoint.json"


def serve_log() -> Path:
    return serve_dir() / "server.log"


def serve_lock() -> Path:
    return serve_dir() / ".lock"


def serve_tags() -> Path:
    """The local servers' evaluation tags, by pid (what Azure keeps as deployment tags)."""
    return serve_dir() / "eval-tags.json"


def eval_dir() -> Path:
    return root() / "eval"


def eval_scores_dir() -> Path:
    """The gate's cache of per-conversation scores, reused across deploys."""
    return eval_dir() / "scores"


def last_verdict_file() -> Path:
    """The gate's last verdict (what deploy decided and why)."""
    return eval_dir() / "last-verdict.json"


def deploy_stage_dir() -> Path:
    return root() / "deploy"


# -- whole paths -----------------------------------------------------------------------------------


def smoke_dir() -> Path:
    return root() / "smoke"


def demo_dir() -> Path:
    return root() / "demo"


def bench_dir() -> Path:
    return root() / "bench"


def job_check_dir(job_name: str) -> Path:
    return root() / "job-check" / job_name


def logs_dir(run: Path) -> Path:
    """The per-step logs of a path (smoke_dir() or demo_dir())."""
    return run / "logs"


def promptflow_home(run: Path) -> Path:
    """A path's own Prompt flow home: the connection it writes never replaces the user's in ~/.promptflow."""
    return run / "promptflow"


def keyring_dir(run: Path) -> Path:
    """XDG_DATA_HOME for a path's file keyring (it encrypts that Prompt flow home's secrets)."""
    return run / "xdg-data"
