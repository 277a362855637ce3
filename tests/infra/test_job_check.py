"""infra.job_check: what a finished job left behind shows it read its data, wrote its outputs and logged to MLflow.

The slow test judges what the real trainer leaves behind (the tiny model's run: its output folder
and the artifacts it logged to MLflow, read back with MLflow), laid out as `jobs.download(all=True)`
lays out a job's download; the SDK call itself is the fake MLClient's.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from fakes.inputs import write_stack_outputs

from common.cli import UserError
from infra import job_check


class Jobs:
    """`ml_client.jobs` at the network edge: one finished job, downloaded from `job_folder`."""

    def __init__(self, status: str, job_folder: Path | None = None) -> None:
        self.status, self.job_folder, self.calls = status, job_folder, []

    def get(self, name: str) -> SimpleNamespace:
        self.calls.append(("get", name))
        return SimpleNamespace(name=name, status=self.status)

    def download(self, name: str, *, download_path: str, output_name: str | None = None, all: bool = False) -> None:
        self.calls.append(("download", name, all))
        shutil.copytree(self.job_folder, download_path, dirs_exist_ok=True)


def client(status: str = "Completed", job_folder: Path | None = None) -> SimpleNamespace:
    return SimpleNamespace(jobs=Jobs(status, job_folder))


def job_folder(root: Path, *, summary: dict | None = None, mlmodel: bool = True, logged: bool = True,
               log_lines: tuple[str, ...] = ("training done",)) -> Path:
    outputs, artifacts = root / "named-outputs" / "model", root / "artifacts"
    outputs.mkdir(parents=True)
    (artifacts / "user_logs").mkdir(parents=True)
    summary = {"global_steps": 4, "eval_loss_before": 6.9, "eval_loss_after": 6.1} if summary is None else summary
    (outputs / "summary.json").write_text(json.dumps(summary))
    if mlmodel:
        (outputs / "MLmodel").write_text("flavors: {}\n")
    if logged:
        (artifacts / "summary.json").write_text(json.dumps(summary))
    (artifacts / "user_logs" / "std_log.txt").write_text("\n".join(log_lines) + "\n")
    return root


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(tmp_path / "runs"))


@pytest.mark.slow
def test_the_real_trainers_leftovers_pass(trained_run: dict, tmp_path: Path) -> None:
    import mlflow

    output_dir = Path(trained_run["output_dir"])
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string=f"tags.model_output = '{output_dir.resolve()}'")
    job = tmp_path / "job"
    shutil.copytree(output_dir, job / "named-outputs" / "model")
    mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(job / "artifacts"))
    assert job_check.check_downloaded(job) == {claim: "ok" for claim in job_check.CLAIMS}


@pytest.mark.parametrize("change, claim, problem", [
    ({"summary": {"global_steps": 0, "eval_loss_before": 6.9}}, "read its data", "no training steps"),
    ({"summary": {"global_steps": 3, "eval_loss_before": float("nan")}}, "read its data", "eval_loss_before=nan"),
    ({"mlmodel": False}, "written its outputs", "lacks MLmodel"),
    ({"logged": False}, "logged to MLflow", "not among the run's MLflow artifacts"),
    ({"log_lines": ("WARNING logging the eval losses to MLflow failed (the model is saved; the job goes on): "
                    "RestException: 403",)}, "logged to MLflow", "user_logs/std_log.txt: WARNING logging the eval losses"),
])
def test_each_claim_fails_on_its_own(tmp_path: Path, change: dict, claim: str, problem: str) -> None:
    result = job_check.check_downloaded(job_folder(tmp_path / "job", **change))
    assert problem in result[claim]
    assert all(value == "ok" for other, value in result.items() if other != claim)


def test_the_trainer_reports_a_failed_mlflow_call_the_way_the_check_reads_it(fine_tune, caplog) -> None:
    assert job_check.SUMMARY == fine_tune.SUMMARY_FILE

    def refused(*args, **kwargs):
        raise PermissionError("403 Forbidden")

    from training.trainer import tracking

    with caplog.at_level(logging.WARNING):
        tracking.optional("logging the eval losses to MLflow", refused)
    assert job_check.MLFLOW_FAILED in caplog.text


def test_the_cli_downloads_judges_and_keeps_the_result(tmp_path: Path, capsys) -> None:
    ml = client(job_folder=job_folder(tmp_path / "job"))
    argv = ["--outputs-file", str(write_stack_outputs(tmp_path / "outputs.json")), "--job", "quiet_fig_1"]
    assert job_check.main(argv, ml_client=ml) == 0
    assert ml.jobs.calls == [("get", "quiet_fig_1"), ("download", "quiet_fig_1", True)]
    printed = capsys.readouterr().out
    assert [line.split()[-1] for line in printed.splitlines()] == ["ok", "ok", "ok"]
    kept = json.loads((tmp_path / "runs" / "job-check" / "quiet_fig_1" / "result.json").read_text())
    assert kept == {"job": "quiet_fig_1", "status": "Completed", **{claim: "ok" for claim in job_check.CLAIMS}}
    assert job_check.main(argv, ml_client=ml) == 0  # safe to run again


def test_a_failing_claim_is_one_message_with_the_way_back(tmp_path: Path) -> None:
    ml = client(job_folder=job_folder(tmp_path / "job", logged=False))
    argv = ["--outputs-file", str(write_stack_outputs(tmp_path / "outputs.json")), "--job", "j1"]
    with pytest.raises(UserError, match=r"could not be shown to have logged to MLflow under the training identity's "
                                        r"AzureML Data Scientist role .*contributorOnResourceGroup true"):
        job_check.main(argv, ml_client=ml)


def test_an_unfinished_or_failed_job_is_refused_before_any_download(tmp_path: Path) -> None:
    ml = client(status="Failed")
    argv = ["--outputs-file", str(write_stack_outputs(tmp_path / "outputs.json")), "--job", "j2"]
    with pytest.raises(UserError, match="ended Failed, not Completed.*403"):
        job_check.main(argv, ml_client=ml)
    assert ml.jobs.calls == [("get", "j2")]


def test_help_is_instant_and_imports_no_sdk() -> None:
    import subprocess
    import sys

    code = ("import sys, runpy; sys.argv = ['x', '--help']\n"
            "try:\n    runpy.run_module('infra.job_check', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('azure', 'pulumi', 'mlflow')), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--job JOB" in done.stdout
    assert done.stderr.strip().endswith("[]")
