"""The MLflow record of a training run: bounded parameters, metrics by step, the summary, the model's location.

Rank 0 alone logs. Azure ML's parameter limit is respected (a fixed, small parameter set, values
cut short). A resumed run logs into the run it continues (locally: the run id its checkpoint
recorded; on Azure ML: the job's own run) from the step after its checkpoint, tagged
`resumed_from`. Everything after the model is saved is optional: a failure warns.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from .settings import Settings

MAX_PARAM_CHARS = 250  # Azure ML / MLflow parameter values are bounded; keep ours short
SUMMARY_FILE = "summary.json"

log = logging.getLogger("fine_tune")


def bounded_params(args: Settings, plan: Any) -> dict[str, str]:
    """A fixed, small parameter set (Azure ML caps the count and the length of MLflow params)."""
    import torch
    import transformers
    import trl

    keys = ["model_name_or_path", "model_revision", "method", "epochs", "max_steps", "learning_rate", "per_device_train_batch_size",
            "per_device_eval_batch_size", "gradient_accumulation_steps", "max_length", "gradient_checkpointing",
            "model_dtype", "seed", "warmup_ratio", "lr_scheduler_type", "weight_decay"]
    if args.method == "lora":
        keys += ["lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"]
    params: dict[str, Any] = {k: getattr(args, k) for k in keys}
    params.update(device=plan.device, attn_implementation=plan.attn_implementation, packing=plan.packing,
                  assistant_only_loss=plan.assistant_only_loss, precision=plan.precision,
                  world_size=plan.world_size, train_rows=plan.train_rows, eval_rows=plan.eval_rows,
                  torch_version=torch.__version__, transformers_version=transformers.__version__,
                  trl_version=trl.__version__, model_dtype=plan.model_dtype, overlong=args.overlong)
    return {k: str(v)[:MAX_PARAM_CHARS] for k, v in params.items()}


def metrics_callback():
    """A TrainerCallback that logs every numeric train/eval log entry to the active MLflow run (rank 0)."""
    import mlflow
    from transformers import TrainerCallback

    class MlflowMetrics(TrainerCallback):
        failed = False

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or self.failed:
                return
            values = {k: float(v) for k, v in logs.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
            if values:
                try:
                    mlflow.log_metrics(values, step=state.global_step)
                except Exception as err:  # noqa: BLE001 - metrics are a record, not the job
                    self.failed = True
                    log.warning("logging metrics to MLflow failed; training goes on without them: %s", err)

    return MlflowMetrics()


def start_run(reopen: str | None = None):
    """The run Azure ML made for this job (MLFLOW_RUN_ID), else `reopen` (the run a resumed local run
    continues), else a new one in the `finetune-phi` experiment.

    The tracking URI comes from MLFLOW_TRACKING_URI (Azure ML sets it). A local file store is
    honoured (MLflow 3 refuses it unless MLFLOW_ALLOW_FILE_STORE is set; asking for one is
    consent enough); with a local sqlite store, a new experiment keeps its artifacts beside the
    database instead of in ./mlruns of whatever the working directory is.
    """
    from urllib.parse import urlparse

    import mlflow

    uri = mlflow.get_tracking_uri()
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    run_id = os.environ.get("MLFLOW_RUN_ID") or reopen
    if not (run_id or os.environ.get("MLFLOW_EXPERIMENT_NAME") or os.environ.get("MLFLOW_EXPERIMENT_ID")):
        name = "finetune-phi"
        if parsed.scheme == "sqlite" and parsed.path not in ("", "/:memory:") and mlflow.get_experiment_by_name(name) is None:
            db = Path(uri[len("sqlite:///"):]).resolve()
            mlflow.create_experiment(name, artifact_location=(db.parent / "mlartifacts").as_uri())
        mlflow.set_experiment(name)
    return mlflow.start_run(run_id=run_id)


def model_location(output_dir: str | Path) -> str:
    """Where the saved model lives: the Azure ML job's named output, or the local folder."""
    job = os.environ.get("AZUREML_RUN_ID")
    return f"azureml://jobs/{job}/outputs/model" if job else str(Path(output_dir).resolve())


def record(args: Settings, summary: Mapping[str, Any]) -> None:
    """The MLflow run references the saved model; every step is optional: a failure warns, the job stays a success."""
    import mlflow

    optional("logging the eval losses to MLflow", mlflow.log_metrics,
             {"eval_loss_before": summary["eval_loss_before"], "eval_loss_after": summary["eval_loss_after"]})
    optional("tagging the MLflow run with the model's location", mlflow.set_tag, "model_output",
             model_location(args.output_dir))
    optional("logging summary.json to MLflow", mlflow.log_dict, dict(summary), SUMMARY_FILE)
    if args.log_model_artifacts:  # opt-in: a second upload of every weight
        optional("copying the model into the MLflow run (--log_model_artifacts)", mlflow.log_artifacts,
                 str(args.output_dir), artifact_path="model")


def optional(what: str, call: Callable[..., Any], *a: Any, **kw: Any) -> None:
    try:
        call(*a, **kw)
    except Exception as err:  # noqa: BLE001 - the model is saved: a bookkeeping failure must not fail the job
        log.warning("%s failed (the model is saved; the job goes on): %s: %s", what, type(err).__name__,
                    str(err).splitlines()[0] if str(err) else "")


def end_run(status: str) -> None:
    """FINISHED, FAILED, or KILLED for a run stopped on request (its resumed segment reopens it)."""
    import mlflow

    mlflow.end_run(status)


def log_params_once(params: Mapping[str, str]) -> None:
    """Parameters of the active run; a resumed run keeps the values it logged first (MLflow refuses changes)."""
    import mlflow

    run = mlflow.active_run()
    logged = mlflow.get_run(run.info.run_id).data.params if run else {}
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})
