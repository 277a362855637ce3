"""`python -m infra.job_check --job NAME`: did a finished training job read its data, write its outputs and log to MLflow?

The training identity holds AzureML Data Scientist on the workspace, not Contributor (docs/INFRA.md,
"What a job submitter can reach"); whether a job still does all of its work under that role can only
be shown on Azure.
A job's status is not enough: the trainer treats MLflow bookkeeping as optional (a failed call
logs a warning and the job still completes), so this reads what the job left behind, with the
caller's own credential (`jobs.download`, all logs and named outputs):

- reads data: the `model` output's summary.json counts optimizer steps and an evaluation loss, which
  needs both the training and the evaluation inputs;
- writes outputs: the `model` output holds the MLflow model (MLmodel) and summary.json;
- logs to MLflow: summary.json is among the run's MLflow artifacts, and no log line says an MLflow
  call failed.

The smoke path runs it after submit (`python -m infra.job_check --job JOB --stack smoke`), and the
result is kept as runs/job-check/<job>/result.json (docs/INFRA.md records the first live one).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path
from typing import Any, Sequence

from common.cli import ArgumentParser, UserError, run_cli, say

SUMMARY = "summary.json"
"""What the trainer writes beside the model and logs to MLflow (training/trainer/fine_tune.py SUMMARY_FILE)."""
MLFLOW_FAILED = "failed (the model is saved; the job goes on)"
"""How the trainer reports an MLflow call that failed (training/trainer/tracking.optional); a test keeps the two in step."""
CLAIMS = ("read its data", "written its outputs", "logged to MLflow")


def _summary(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def reads_data(outputs: Path) -> str | None:
    """None when it did; else what is missing."""
    summary = _summary(outputs)
    if summary is None:
        return f"no {SUMMARY} in the model output"
    steps, loss = summary.get("global_steps"), summary.get("eval_loss_before")
    if not (isinstance(steps, int) and steps > 0 and isinstance(loss, (int, float)) and math.isfinite(loss)):
        return f"{SUMMARY} shows no training steps or evaluation loss (global_steps={steps}, eval_loss_before={loss})"
    return None


def writes_outputs(outputs: Path) -> str | None:
    missing = [name for name in ("MLmodel", SUMMARY) if not (outputs / name).is_file()]
    return f"the model output lacks {', '.join(missing)}" if missing else None


def logs_to_mlflow(artifacts: Path) -> str | None:
    if not (artifacts / SUMMARY).is_file():
        return f"{SUMMARY} is not among the run's MLflow artifacts"
    for log in sorted(artifacts.rglob("*.txt")):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if MLFLOW_FAILED in line:
                return f"{log.relative_to(artifacts)}: {line.strip()[:300]}"
    return None


def check_downloaded(folder: Path) -> dict[str, str]:
    """Each claim -> "ok" or what is wrong, from a `jobs.download(..., all=True)` folder."""
    outputs, artifacts = folder / "named-outputs" / "model", folder / "artifacts"
    found = (reads_data(outputs), writes_outputs(outputs), logs_to_mlflow(artifacts))
    return {claim: problem or "ok" for claim, problem in zip(CLAIMS, found)}


def check_job(ml_client: Any, name: str, folder: Path) -> dict[str, Any]:
    """Download a finished job's logs and outputs into `folder` and judge them; the result is also written there."""
    from common.azure import azure_errors

    with azure_errors(f"reading job {name}"):
        status = ml_client.jobs.get(name).status
    if status != "Completed":
        raise UserError(f"job {name} ended {status}, not Completed: read its log in the studio; a 403 there means the "
                        "training identity lacks a right (docs/INFRA.md, What a job submitter can reach).")
    with azure_errors(f"downloading job {name}'s logs and outputs"):
        ml_client.jobs.download(name, download_path=str(folder), all=True)
    result = {"job": name, "status": status, **check_downloaded(folder)}
    (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def build_parser() -> argparse.ArgumentParser:
    from infra.outputs import add_stack_arguments

    parser = ArgumentParser(prog="python -m infra.job_check", description=__doc__.splitlines()[0].split(": ", 1)[1])
    add_stack_arguments(parser)
    parser.add_argument("--job", required=True, help="the finished fine-tuning job (its name, as submit printed it)")
    return parser


def main(argv: Sequence[str] | None = None, *, ml_client: Any = None) -> int:
    from common.azure import make_ml_client
    from infra.outputs import load_stack_outputs
    from common import runs

    args = build_parser().parse_args(argv)
    outputs = load_stack_outputs(args.outputs_file, args.stack)
    folder = runs.job_check_dir(args.job)
    shutil.rmtree(folder, ignore_errors=True)  # a second run judges a fresh download
    folder.mkdir(parents=True)
    say(f"==> job {args.job}: downloading its logs and outputs to {folder}")
    result = check_job(ml_client or make_ml_client(outputs), args.job, folder)
    for claim in CLAIMS:
        print(f"{claim:20} {result[claim]}")
    failed = [claim for claim in CLAIMS if result[claim] != "ok"]
    if failed:
        raise UserError(f"job {args.job} could not be shown to have {', '.join(failed)} under the training identity's "
                        f"AzureML Data Scientist role (details above, {folder / 'result.json'}). To give it the "
                        "tutorials' Contributor on the resource group meanwhile: "
                        "`pulumi config set contributorOnResourceGroup true && pulumi up`.")
    return 0


if __name__ == "__main__":
    run_cli(main)
