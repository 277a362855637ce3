"""Job builders: the SFT command job and the registry pipeline, as Azure ML job YAML.

Each builder returns the job as a plain dict in Azure ML's YAML job schema. That one dict is
what `--dry-run` prints and what a real submit loads with `azure.ai.ml.load_job` and sends, so
the preview and the submitted job cannot drift apart. No Azure import at module level.
"""
from __future__ import annotations

import io
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from training.code_staging import ENTRY_MODULE
from training.discovery import EXPERIMENT_NAME, job_tags
from training.hyperparams import trainer_argv

COMMAND_SCHEMA = "https://azuremlschemas.azureedge.net/latest/commandJob.schema.json"
PIPELINE_SCHEMA = "https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json"
REGISTRY = "azureml"
REGISTRY_COMPONENT = "chat_completion_pipeline"
DEFAULT_SHM_SIZE = "16g"

TUTORIAL_PARAMS: dict[str, Any] = {
    "num_train_epochs": 3,
    "per_device_train_batch_size": 1,
    "per_device_eval_batch_size": 1,
    "learning_rate": 5e-6,
    "lr_scheduler_type": "cosine",
    "apply_lora": "true",
    "apply_deepspeed": "true",
    "deepspeed_stage": "2",
}
"""The Phi-3 registry fine-tuning tutorial's settings; the model's own defaults override them."""


def registry_component_uri(name: str = REGISTRY_COMPONENT, label: str = "latest") -> str:
    return f"azureml://registries/{REGISTRY}/components/{name}/labels/{label}"


def registry_model_uri(name: str, label: str = "latest") -> str:
    return f"azureml://registries/{REGISTRY}/models/{name}/labels/{label}"


MODEL_INPUT_TYPES = ("custom_model", "mlflow_model")
"""How a registered model (`azureml:NAME:VERSION`) enters the job: as the model asset it is, not a data asset."""


def _is_local(model: str) -> bool:
    """A local folder (absolute paths count even before they exist: a dry run names the tiny
    model's folder without building it)."""
    return Path(model).is_absolute() or Path(model).is_dir()


@dataclass
class SftJob:
    """Everything the SFT command job is made of (paths absolute; refs `azureml:name:version`)."""

    model: str
    compute: str
    code_dir: Path
    """The staged folder that holds `trainer/` (training.code_staging)."""
    device: str
    """What the trainer must train on: `cuda` on a GPU cluster (it refuses to fall back to CPU), `cpu` on a CPU one."""
    environment: str | Mapping[str, Any]
    train_data: str
    eval_data: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    instance_count: int = 1
    gpus_per_node: int = 1
    shm_size: str = DEFAULT_SHM_SIZE
    tags: Mapping[str, str] = field(default_factory=dict)
    display_name: str | None = None
    name: str | None = None
    experiment_name: str = EXPERIMENT_NAME
    model_revision: str | None = None
    """The pinned hub commit (training.models), for a hub id."""
    model_input_type: str = "custom_model"
    """For `azureml:NAME:VERSION`: the registered model's type (a real submit reads it; a dry run assumes custom_model)."""
    run_key: str | None = None
    """training.run_key: the trainer writes it into each checkpoint and compares it on resume."""
    resume_from: str | None = None
    """Another run's checkpoints to start from (azureml://jobs/<job>/outputs/checkpoints, or a local folder)."""
    resume_force: bool = False
    """Resume even from another run key or world size (`--force`)."""

    @property
    def processes_per_node(self) -> int:
        return max(self.gpus_per_node, 1)

    @property
    def distributed(self) -> bool:
        return self.instance_count * self.processes_per_node > 1


def _data_input(path_or_ref: str) -> dict[str, Any]:
    return {"type": "uri_file", "path": path_or_ref, "mode": "ro_mount"}


def _resume_flags(job: SftJob, inputs: dict[str, Any]) -> list[str]:
    """Checkpoints to the named `checkpoints` output (a requeued job resumes from them), and another run's to start from."""
    flags = ["--checkpoint_dir ${{outputs.checkpoints}}"]
    if job.run_key:
        flags += ["--run_key", shlex.quote(job.run_key)]
    if job.resume_from:
        inputs["resume_from"] = {"type": "uri_folder", "path": job.resume_from, "mode": "ro_mount"}
        flags.append("--resume_from ${{inputs.resume_from}}")
    if job.resume_force:
        flags += ["--resume_force", "true"]
    return flags


def build_sft_job(job: SftJob) -> dict[str, Any]:
    """The command job: code = the staged trainer package only, named outputs `model` and `checkpoints`, the trainer's flags."""
    if job.model_input_type not in MODEL_INPUT_TYPES:
        raise ValueError(f"model input type {job.model_input_type!r}: expected one of {MODEL_INPUT_TYPES}")
    inputs: dict[str, Any] = {"train_file": _data_input(job.train_data), "eval_file": _data_input(job.eval_data)}
    revision: list[str] = []
    if job.model.startswith("azureml:"):
        inputs["model"] = {"type": job.model_input_type, "path": job.model, "mode": "ro_mount"}
        model_arg = "${{inputs.model}}"
    elif _is_local(job.model):
        inputs["model"] = {"type": "uri_folder", "path": str(Path(job.model).resolve()), "mode": "ro_mount"}
        model_arg = "${{inputs.model}}"
    else:
        model_arg = shlex.quote(job.model)
        revision = ["--model_revision", shlex.quote(job.model_revision)] if job.model_revision else []
    command = " ".join(
        [
            "python -m",
            ENTRY_MODULE,
            "--model_name_or_path",
            model_arg,
            *revision,
            "--device",
            job.device,
            "--train_file ${{inputs.train_file}}",
            "--eval_file ${{inputs.eval_file}}",
            "--output_dir ${{outputs.model}}",
            *_resume_flags(job, inputs),
            *(shlex.quote(part) for part in trainer_argv(job.hyperparameters)),
        ]
    )
    spec = _job_header(
        job, COMMAND_SCHEMA, "command", "sft",
        "Supervised fine-tuning of a Phi model with TRL (training/trainer, staged as the `trainer` package).",
    )
    spec.update(
        {
            "code": str(Path(job.code_dir).resolve()),
            "command": command,
            "environment": job.environment if isinstance(job.environment, str) else dict(job.environment),
            # Azure ML sets MLFLOW_TRACKING_URI and MLFLOW_RUN_ID itself: the trainer logs into the job's run
            "environment_variables": {"TOKENIZERS_PARALLELISM": "false"},
            "compute": f"azureml:{job.compute}",
            "inputs": inputs,
            # `checkpoints` apart from `model`: deploy registers `model`; checkpoints are deleted once it is saved
            "outputs": {"model": {"type": "uri_folder", "mode": "rw_mount"},
                        "checkpoints": {"type": "uri_folder", "mode": "rw_mount"}},
            "resources": {"instance_count": job.instance_count, "shm_size": job.shm_size},
        }
    )
    if job.distributed:
        spec["distribution"] = {"type": "pytorch", "process_count_per_instance": job.processes_per_node}
    return spec


@dataclass
class RegistryJob:
    """The registry pipeline's parts: component and model by registry URI, data, compute, parameters."""

    model_uri: str
    compute: str
    train_data: str
    eval_data: str
    parameters: Mapping[str, Any]
    gpus_per_node: int = 1
    instance_count: int = 1
    component_uri: str = field(default_factory=registry_component_uri)
    tags: Mapping[str, str] = field(default_factory=dict)
    display_name: str | None = None
    name: str | None = None
    experiment_name: str = EXPERIMENT_NAME


def merge_registry_params(
    model_defaults: Mapping[str, Any] | None, user: Mapping[str, Any], allowed: set[str] | None = None
) -> dict[str, Any]:
    """Tutorial settings < the model's `model_specific_defaults` < the user's flags.

    With `allowed` (the component's input names), keys the component does not take are dropped
    from the first two layers and refused from the user's layer (ValueError naming them).
    """
    merged = {**TUTORIAL_PARAMS, **(model_defaults or {})}
    if allowed is not None:
        refused = sorted(set(user) - allowed)
        if refused:
            raise ValueError(", ".join(refused))
        merged = {k: v for k, v in merged.items() if k in allowed}
    merged.update(user)
    return merged


def _job_header(job: Any, schema: str, job_type: str, recipe: str, description: str) -> dict[str, Any]:
    """What both recipes' job specs start with: schema, name, display name, experiment, tags."""
    spec: dict[str, Any] = {"$schema": schema, "type": job_type}
    if job.name:
        spec["name"] = job.name
    spec.update(
        {
            "display_name": job.display_name or f"finetune-phi-{recipe}",
            "experiment_name": job.experiment_name,
            "description": description,
            "tags": {**{k: str(v) for k, v in job.tags.items()}, **job_tags(recipe)},
        }
    )
    return spec


def build_registry_job(job: RegistryJob) -> dict[str, Any]:
    """The tutorial's pipeline: chat_completion_pipeline on the foundation model, output `trained_model`."""
    node_inputs: dict[str, Any] = {
        "mlflow_model_path": {"type": "mlflow_model", "path": job.model_uri},
        "compute_model_import": job.compute,
        "compute_preprocess": job.compute,
        "compute_finetune": job.compute,
        "compute_model_evaluation": job.compute,
        "train_file_path": {"type": "uri_file", "path": job.train_data},
        "test_file_path": {"type": "uri_file", "path": job.eval_data},
        "number_of_gpu_to_use_finetuning": job.gpus_per_node,
    }
    if job.instance_count > 1:
        node_inputs["num_nodes_finetune"] = job.instance_count
    node_inputs.update(job.parameters)
    spec = _job_header(
        job, PIPELINE_SCHEMA, "pipeline", "registry",
        "Azure ML registry recipe: chat_completion_pipeline from registry azureml.",
    )
    spec.update(
        {
            "settings": {
                "default_compute": f"azureml:{job.compute}",
                "force_rerun": True,
                "continue_on_step_failure": False,
            },
            "outputs": {"trained_model": {"type": "mlflow_model"}},
            "jobs": {
                "chat_completion": {
                    "type": "pipeline",
                    "component": job.component_uri,
                    "inputs": node_inputs,
                    "outputs": {"mlflow_model_folder": "${{parent.outputs.trained_model}}"},
                }
            },
        }
    )
    return spec


def to_yaml(spec: Mapping[str, Any], header: str | None = None) -> str:
    import yaml

    text = yaml.safe_dump(dict(spec), sort_keys=False, default_flow_style=False, width=100_000)  # one line per command
    if header:
        text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + text
    return text


def load(spec: Mapping[str, Any]) -> Any:
    """The azure-ai-ml job entity for a spec (what `az ml job create -f` would load)."""
    from azure.ai.ml import load_job

    return load_job(source=io.StringIO(to_yaml(spec)))
