"""Which model to deploy, and its registration as an MLflow model (idempotent).

`--job NAME` or, by default, the newest completed fine-tuning job (training.discovery): the job's
named model output is registered as `phi3-finetuned` with the tag `source-job: <job>`. A version
carrying that tag already exists -> it is reused, so re-running deploy never registers twice.
`--model NAME:VERSION` uses an already registered model as is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.azure import azure_errors
from common.cli import UserError, say
from deployment.definitions import CREATED_BY, MODEL_NAME

SOURCE_JOB_TAG = "source-job"
DEFAULT_OUTPUT = "model"


@dataclass(frozen=True)
class ModelChoice:
    """What the user asked for: a job (output to register) or a registered model."""

    job: str | None = None
    model: str | None = None  # NAME:VERSION


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    source_job: str | None
    reused: bool

    @property
    def reference(self) -> str:
        return f"azureml:{self.name}:{self.version}"


def parse_model_ref(value: str) -> tuple[str, str]:
    name, sep, version = value.partition(":")
    if value.startswith("azureml:"):
        name, sep, version = value[len("azureml:"):].partition(":")
    if not sep or not name or not version:
        raise UserError(f"--model takes NAME:VERSION (for example {MODEL_NAME}:3), got {value!r}")
    return name, version


def job_output_path(job: str, output_name: str) -> str:
    return f"azureml://jobs/{job}/outputs/{output_name}"


def _job_output_name(ml_client: Any, job_name: str) -> str:
    """The named output holding the MLflow model of `--job NAME`; the job must have completed."""
    from azure.core.exceptions import ResourceNotFoundError

    from training.discovery import COMPLETED, OUTPUT_NAMES, TAG_KEY

    with azure_errors(f"looking up job {job_name!r}"):
        try:
            job = ml_client.jobs.get(job_name)
        except ResourceNotFoundError:
            raise UserError(
                f"there is no job {job_name!r} in {_workspace(ml_client)}: check the name "
                "(`az ml job list --query \"[].name\"`, or Azure ML studio > Jobs), or leave --job out to deploy "
                "the latest completed fine-tuning job."
            ) from None
    status = job.status
    if status != COMPLETED:
        raise UserError(
            f"job {job_name} is {status or 'in an unknown state'}, not Completed: there is no model to deploy yet. "
            f"Follow it with `az ml job stream -n {job_name}` and deploy when it completes."
        )
    recipe = (job.tags or {}).get(TAG_KEY)
    return OUTPUT_NAMES.get(recipe, DEFAULT_OUTPUT)


def _workspace(ml_client: Any) -> str:
    name = ml_client.workspace_name
    return f"workspace {name}" if name else "the stack's workspace"


def _existing_versions(ml_client: Any, name: str) -> list[Any]:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return list(ml_client.models.list(name=name))
    except ResourceNotFoundError:
        return []


def register_job_model(ml_client: Any, job_name: str, output_name: str, name: str = MODEL_NAME) -> RegisteredModel:
    """Register the job's model output, or reuse the version already registered from that job."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model

    with azure_errors(f"registering the model of job {job_name!r}"):
        versions = _existing_versions(ml_client, name)
        for existing in versions:
            if (existing.tags or {}).get(SOURCE_JOB_TAG) == job_name:
                say(f"    model {name}:{existing.version} was already registered from job {job_name}: reusing it")
                return RegisteredModel(name, str(existing.version), job_name, reused=True)
        numeric = [int(v.version) for v in versions if str(v.version).isdigit()]
        version = str(max(numeric, default=0) + 1)
        entity = Model(
            name=name,
            version=version,
            path=job_output_path(job_name, output_name),
            type=AssetTypes.MLFLOW_MODEL,
            description=f"Phi-3 fine-tuned by job {job_name}",
            tags={SOURCE_JOB_TAG: job_name, **CREATED_BY},
        )
        created = ml_client.models.create_or_update(entity)
    version = str(created.version or version)
    say(f"    registered model {name}:{version} from {job_output_path(job_name, output_name)}")
    return RegisteredModel(name, version, job_name, reused=False)


def resolve_model(ml_client: Any, choice: ModelChoice) -> RegisteredModel:
    """The registered model to deploy: the named one, or the job's (given or latest) registered now."""
    from azure.core.exceptions import ResourceNotFoundError

    if choice.model:
        name, version = parse_model_ref(choice.model)
        with azure_errors(f"looking up model {name}:{version}"):
            try:
                found = ml_client.models.get(name=name, version=version)
            except ResourceNotFoundError:
                raise UserError(
                    f"model {name}:{version} is not registered in {_workspace(ml_client)}: list its "
                    f"versions with `az ml model list --name {name}`, or deploy a fine-tuning job's model with "
                    "--job NAME (or no flag: the latest completed job)."
                ) from None
        source = (found.tags or {}).get(SOURCE_JOB_TAG)
        say(f"    using registered model {name}:{version}")
        return RegisteredModel(name, version, source, reused=True)
    if choice.job:
        job_name, output_name = choice.job, _job_output_name(ml_client, choice.job)
    else:
        from training.discovery import latest_completed_job

        job_name, output_name = latest_completed_job(ml_client)
        say(f"    latest completed fine-tuning job: {job_name}")
    return register_job_model(ml_client, job_name, output_name)
