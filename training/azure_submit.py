"""The Azure path of `python -m training.submit`: named steps over one job builder.

`build_job` is the only place a job is made. The dry run feeds it offline stand-ins (local data
paths, the inline environment, the VM-size table); the real submit feeds it what Azure answers
(data assets, the registered environment, the cluster's VM size, the registry's component and
model). So the YAML a dry run prints is the job a submit sends, with those references swapped.

Real submit: stack outputs -> data present -> MLClient -> preflight (infra.preflight) -> cluster -> quota ->
environment or registry model -> data assets -> job -> submit -> follow. Heavy SDK imports stay
inside the functions: the dry run never loads azure.identity or azure.ai.ml.
"""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from common.cli import UserError, say, step
from common.vm_sizes import VmSize
from training import azure_resume, jobs, models, run_key
from training.azure_resume import ResumePlan
from training.discovery import EXPERIMENT_NAME

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Request:
    """What the user asked for, resolved by the CLI (model names, flags); no Azure answer in it."""

    recipe: str
    model: str
    """sft: hub id, absolute local folder or azureml:NAME:VERSION; registry: the registry asset name."""
    hyperparameters: dict[str, Any]
    data_dir: Path
    model_revision: str | None = None
    instance_count: int = 1
    shm_size: str = jobs.DEFAULT_SHM_SIZE
    experiment: str = EXPERIMENT_NAME
    display_name: str | None = None
    outputs_file: Path | None = None
    stack: str | None = None
    no_stream: bool = False
    resume: str = "auto"
    """auto | never (training.azure_resume)."""
    resume_from: str | None = None
    force: bool = False


@dataclass
class Cloud:
    """What the job refers to that Azure decides; a dry run fills it from local stand-ins."""

    vm: VmSize
    train: str
    eval: str
    environment: str | dict[str, Any] | None = None
    code_dir: Path | None = None
    model_input_type: str = "custom_model"
    component_uri: str = field(default_factory=jobs.registry_component_uri)
    model_uri: str | None = None
    model_defaults: dict[str, Any] | None = None
    component_inputs: set[str] | None = None
    name: str | None = None
    run_key: str | None = None
    resume: ResumePlan = field(default_factory=ResumePlan)


# ---------------------------------------------------------------- the one job builder


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def _tags(request: Request, data_hash: str, cloud: Cloud) -> dict[str, str]:
    config = json.dumps({"model": request.model, "model_revision": request.model_revision,
                         "instance_count": request.instance_count, **request.hyperparameters}, separators=(",", ":"))
    tags = {"git_commit": _git_commit(), "data_hash": data_hash, "config": config[:1000], "model": request.model[:250]}
    if cloud.run_key:  # the SFT recipe: what a later submit looks up to resume this run
        tags[run_key.TAG] = cloud.run_key
        tags[azure_resume.WORLD_SIZE_TAG] = str(world_size(request, cloud.vm))
    if cloud.resume.resumed_from:
        tags[azure_resume.RESUMED_FROM_TAG] = cloud.resume.resumed_from[:250]
    return tags


def world_size(request: Request, vm: VmSize) -> int:
    """Training processes: one per GPU (one per node on a CPU size), on every node."""
    return request.instance_count * max(vm.gpus, 1)


def request_key(request: Request, files: Any) -> str | None:
    """The SFT run's key (training.run_key); the registry pipeline keeps no checkpoints of ours."""
    if request.recipe != "sft":
        return None
    from training import hyperparams

    return run_key.compute(request.model, request.model_revision, files.train.sha256, files.eval.sha256,
                           hyperparams.resolved(request.hyperparameters))


def job_name(recipe: str) -> str:
    return f"finetune-phi-{recipe}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _display_name(request: Request) -> str:
    if request.display_name:
        return request.display_name
    short = Path(request.model.rstrip("/")).name.split(":")[0] or "model"
    return f"{short}-{request.recipe}-{time.strftime('%Y%m%d-%H%M')}"


def device_for(vm: VmSize, recipe: str, *, warn: bool = False) -> str:
    """`cuda` on a GPU size (the trainer then refuses to crawl on CPU); `cpu` on a CPU size, for smoke runs only."""
    if vm.gpus > 0:
        return "cuda"
    if recipe == "registry":
        raise UserError(f"{vm.name} has no GPU: the registry's chat_completion_pipeline needs a GPU size from the "
                        "model's finetune_compute_allow_list. CPU clusters run `--recipe sft` smoke tests only.")
    if warn:
        say(f"    warning: {vm.name} has no GPU; the job trains on CPU (`--device cpu`). That suits the tiny model and "
            "smoke runs only: a Phi model would take days. Use a GPU cluster for real fine-tuning.")
    return "cpu"


def user_registry_params(values: dict[str, Any]) -> dict[str, Any]:
    """The user's flags as pipeline inputs; trainer-only flags and a fractional --epochs are refused."""
    from training import hyperparams

    epochs = values.get("epochs")
    if epochs is not None and not float(epochs).is_integer():
        raise UserError(f"--epochs {epochs}: the registry pipeline's num_train_epochs is a whole number. "
                        "Pass a whole number of epochs, or use --recipe sft (this repo's trainer takes fractions).")
    try:
        return hyperparams.registry_params(values)
    except hyperparams.NotOfferedByRegistry as err:
        raise UserError(f"{err} has no equivalent input in the registry's chat_completion_pipeline; "
                        "drop it, or use --recipe sft (this repo's trainer takes every flag).") from None


def registry_params(request: Request, cloud: Cloud) -> dict[str, Any]:
    """Tutorial settings < the model's model_specific_defaults < the user's flags (only inputs the component has)."""
    user = user_registry_params(request.hyperparameters)
    try:
        return jobs.merge_registry_params(cloud.model_defaults, user, cloud.component_inputs)
    except ValueError as err:
        raise UserError(f"the registry's {jobs.REGISTRY_COMPONENT} has no input {err}; drop that flag.") from None


def build_job(request: Request, outputs: Any, data_hash: str, cloud: Cloud) -> dict[str, Any]:
    """The job spec for either recipe: what the dry run prints and the real submit sends."""
    common = dict(compute=outputs.compute_name, train_data=cloud.train, eval_data=cloud.eval,
                  instance_count=request.instance_count, tags=_tags(request, data_hash, cloud),
                  display_name=_display_name(request), name=cloud.name, experiment_name=request.experiment)
    if request.recipe == "sft":
        assert cloud.environment is not None and cloud.code_dir is not None
        return jobs.build_sft_job(jobs.SftJob(
            model=request.model, model_revision=request.model_revision, model_input_type=cloud.model_input_type,
            code_dir=cloud.code_dir, device=device_for(cloud.vm, "sft"), environment=cloud.environment,
            hyperparameters=request.hyperparameters, gpus_per_node=cloud.vm.gpus, shm_size=request.shm_size,
            run_key=cloud.run_key, resume_from=cloud.resume.input_path, resume_force=cloud.resume.force, **common))
    device_for(cloud.vm, "registry")
    return jobs.build_registry_job(jobs.RegistryJob(
        model_uri=cloud.model_uri or jobs.registry_model_uri(request.model), component_uri=cloud.component_uri,
        parameters=registry_params(request, cloud), gpus_per_node=cloud.vm.gpus, **common))


def check_instance_count(request: Request, max_nodes: int, compute: str) -> None:
    if request.instance_count < 1:
        raise UserError("--instance-count must be at least 1.")
    if request.instance_count > max_nodes:
        raise UserError(
            f"--instance-count {request.instance_count} is more than cluster {compute} can scale to ({max_nodes} nodes). "
            "Raise the stack's compute max nodes and run `pulumi up`, or ask for fewer nodes."
        )


# ---------------------------------------------------------------- entry: dry run or submit


def run(request: Request, *, ml_client: Any = None, registry_client: Any = None, credential: Any = None,
        dry_run: bool = False) -> int:
    from infra.outputs import load_stack_outputs
    from training.data_assets import check_data

    outputs = load_stack_outputs(request.outputs_file, request.stack)
    files = check_data(request.data_dir, source_hint="hf")
    if dry_run:
        return print_dry_run(request, outputs, files)
    with _sdk_errors():
        return submit(request, outputs, files, ml_client=ml_client, registry_client=registry_client, credential=credential)


def print_dry_run(request: Request, outputs: Any, files: Any) -> int:
    """The job YAML, from the stack outputs and local files only: no credential, no network."""
    from training import code_staging, quota
    from training.environment import environment_spec

    vm = quota.offline_vm(outputs.compute_vm_size)
    check_instance_count(request, outputs.compute_max_nodes, outputs.compute_name)
    device_for(vm, request.recipe, warn=True)
    cloud = Cloud(vm=vm, train=str(files.train.path), eval=str(files.eval.path), run_key=request_key(request, files))
    if request.recipe == "sft":
        spec = environment_spec()
        cloud.environment = {"image": spec["image"], "conda_file": spec["conda_file"]}
        cloud.code_dir = code_staging.stage_trainer()
        cloud.resume = azure_resume.offline(request.resume, request.resume_from, cloud.run_key, world_size(request, vm),
                                            request.force)
    else:
        models.check_registry_model(request.model, None)  # the table's dates: a dry run reads no tags
    body = build_job(request, outputs, files.hash, cloud)
    tier = tier_line(outputs.compute_priority, request)
    say(f"    {tier}")
    if cloud.run_key:
        say(f"    run {cloud.run_key}; {cloud.resume.note}")
    header = (
        f"finetune-phi {request.recipe} job (dry run) for workspace {outputs.workspace_name}, cluster {outputs.compute_name}.\n"
        f"{tier}\n"
        + (f"Run key {cloud.run_key}; {cloud.resume.note}.\n" if cloud.run_key else "")
        + "Data inputs are local paths here; a real submit registers them as versioned data assets"
        + (" and the environment as finetune-phi-train:<content hash>." if request.recipe == "sft" else ".")
        + ("\nA registered model is a custom_model input here; a real submit uses its registered type."
           if request.model.startswith("azureml:") else "")
        + (f"\nModel {request.model}: {models.REGISTRY_CHOICE_NOTE}" if request.recipe == "registry" else "")
        + "\nSubmit as is with: az ml job create -f FILE"
    )
    sys.stdout.write(jobs.to_yaml(body, header=header))
    return 0


def submit(request: Request, outputs: Any, files: Any, *, ml_client: Any, registry_client: Any, credential: Any) -> int:
    """The real submit, step by step."""
    ml_client, registry_client, credential = make_clients(outputs, request, ml_client, registry_client, credential)
    preflight(outputs, credential)
    with step(f"checking cluster {outputs.compute_name} and quota"):
        vm = check_cluster_and_quota(ml_client, outputs, request)
        device_for(vm, request.recipe, warn=True)
    if request.recipe == "sft":
        key = request_key(request, files)
        with step(f"run {key}: checkpoints to resume from"):
            resume = azure_resume.lookup(ml_client, request.resume, request.resume_from, key, world_size(request, vm),
                                         request.force, request.experiment)
            azure_resume.announce(resume)
        cloud = sft_cloud(ml_client, request, files, vm)
        cloud.run_key, cloud.resume = key, resume
    else:
        cloud = registry_cloud(ml_client, registry_client, request, outputs, files, vm)
    cloud.name = job_name(request.recipe)
    name, url = submit_job(ml_client, build_job(request, outputs, files.hash, cloud), outputs, request.experiment)
    if request.no_stream:
        say(f"    follow it: `az ml job stream -n {name} {_az_args(outputs)}`; cancel: `az ml job cancel -n {name} {_az_args(outputs)}`")
        return 0
    return follow(ml_client, name, outputs, url, cloud.environment if request.recipe == "sft" else None, request.experiment)


# ---------------------------------------------------------------- steps


def make_clients(outputs: Any, request: Request, ml_client: Any, registry_client: Any,
                 credential: Any) -> tuple[Any, Any, Any]:
    """The workspace MLClient (and the azureml registry's, for the registry recipe) and the credential
    (None when tests inject both clients); no network until used."""
    from common.azure import make_ml_client

    if credential is None and (ml_client is None or (request.recipe == "registry" and registry_client is None)):
        from common.azure import azure_credential

        credential = azure_credential(outputs.tenant_id)
    if ml_client is None:
        ml_client = make_ml_client(outputs, credential)
    if request.recipe == "registry" and registry_client is None:
        from azure.ai.ml import MLClient

        registry_client = MLClient(credential, registry_name=jobs.REGISTRY)
    say(f"==> workspace {outputs.workspace_name} ({outputs.resource_group_name}, {outputs.location}); stack: {outputs.source}")
    return ml_client, registry_client, credential


def preflight(outputs: Any, credential: Any) -> None:
    """The caller's Azure rights and fresh role assignments, before anything is read or bills (infra.preflight)."""
    from infra.preflight import require

    require(outputs, "submit", credential)


def _low_priority(compute: Any, outputs: Any) -> bool:
    """The cluster's VM priority (`tier` low_priority / LowPriority), else the stack's `compute_priority` output."""
    return is_low_priority(compute.tier or outputs.compute_priority)


def is_low_priority(tier: str | None) -> bool:
    return str(tier or "").replace("_", "").lower() == "lowpriority"


def tier_line(tier: str | None, request: Request) -> str:
    """The cluster's tier, and for low priority what a preemption costs with this job's checkpoints."""
    if not is_low_priority(tier):
        return "cluster tier: dedicated"
    if request.recipe != "sft":
        return ("cluster tier: low priority (preemptible); the registry pipeline keeps no checkpoints of ours, so a "
                "preemption restarts it")
    from training import hyperparams

    minutes = hyperparams.resolved(request.hyperparameters)["checkpoint_minutes"]
    return (f"cluster tier: low priority (preemptible); checkpoints are on: every {minutes:g} min to the job's "
            "`checkpoints` output, so a preemption costs at most that much training, and the requeued job resumes")


def check_cluster_and_quota(ml_client: Any, outputs: Any, request: Request) -> VmSize:
    """The cluster exists and fits the node count; the subscription's quota fits the job. Returns its VM size."""
    from azure.core.exceptions import ResourceNotFoundError

    from common.azure import azure_errors
    from training import quota

    with azure_errors(f"reading cluster {outputs.compute_name}"):
        try:
            compute = ml_client.compute.get(outputs.compute_name)
        except ResourceNotFoundError as err:
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else "not found"
            raise UserError(
                f"compute cluster {outputs.compute_name} (or workspace {outputs.workspace_name} in resource group "
                f"{outputs.resource_group_name}) was not found ({first}). Run `pulumi up` for this stack, "
                "or pass the right --stack / --outputs-file."
            ) from None
    if str(compute.provisioning_state or "").lower() == "failed":
        raise UserError(
            f"cluster {outputs.compute_name} is in provisioning state Failed; delete it in Azure ML studio and run `pulumi up`."
        )
    vm_size = str(compute.size or outputs.compute_vm_size)
    if vm_size.lower() != outputs.compute_vm_size.lower():
        say(f"    note: cluster {outputs.compute_name} runs {vm_size}, the stack outputs say {outputs.compute_vm_size}; using {vm_size}")
    max_nodes = int(compute.max_instances or outputs.compute_max_nodes)
    check_instance_count(request, max_nodes, outputs.compute_name)
    sizes = quota.subscription_read(lambda: ml_client.compute.list_sizes(location=outputs.location),
                                    "listing VM sizes", "the offline VM-size table is used instead")
    vm = quota.vm_info(vm_size, sizes)
    usages = quota.subscription_read(lambda: ml_client.compute.list_usage(location=outputs.location),
                                     f"reading quota in {outputs.location}",
                                     "the quota check is skipped: if quota is short the job waits in the queue")
    if usages is not None:
        quota.check_quota(usages, vm, request.instance_count, outputs.location, low_priority=_low_priority(compute, outputs))
    kind = f"{vm.gpus} GPU(s)" if vm.gpus else "no GPU"
    say(f"    cluster {outputs.compute_name}: {vm.name}, {kind} and {vm.vcpus} vCPUs per node, up to {max_nodes} nodes")
    say(f"    {tier_line(compute.tier or outputs.compute_priority, request)}")
    return vm


def _model_input_type(ml_client: Any, model: str) -> str:
    """A registered model's type (custom_model or mlflow_model), read from the workspace."""
    from common.azure import azure_errors

    name, _, version = model.removeprefix("azureml:").partition(":")
    if not name or not version:
        raise UserError(f"--model {model}: a registered model is azureml:NAME:VERSION.")
    with azure_errors(f"reading registered model {name}:{version}"):
        registered = ml_client.models.get(name=name, version=version)
    kind = str(registered.type or "custom_model")
    if kind not in jobs.MODEL_INPUT_TYPES:
        raise UserError(f"model {name}:{version} is a {kind} model; the trainer needs a Hugging Face folder "
                        "(custom_model) or an MLflow model (mlflow_model).")
    return kind


def sft_cloud(ml_client: Any, request: Request, files: Any, vm: VmSize) -> Cloud:
    """Environment (reused when unchanged), staged trainer, registered model's type, data assets (uploaded once)."""
    from training import code_staging
    from training.data_assets import ensure_data_assets
    from training.environment import ensure_environment, environment_spec

    with step("training environment"):
        environment = ensure_environment(ml_client, environment_spec())
    model_input_type = _model_input_type(ml_client, request.model) if request.model.startswith("azureml:") else "custom_model"
    with step("data assets"):
        refs = ensure_data_assets(ml_client, files)
    return Cloud(vm=vm, train=refs["train"], eval=refs["eval"], environment=environment,
                 code_dir=code_staging.stage_trainer(), model_input_type=model_input_type)


def _parse_tag(tags: dict[str, Any], key: str) -> Any:
    import ast

    raw = tags.get(key)
    if raw is None or not isinstance(raw, str):
        return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise UserError(f"the registry model's tag {key} is not a Python literal ({raw[:80]!r}); report it or pin another model.") from None


def registry_cloud(ml_client: Any, registry_client: Any, request: Request, outputs: Any, files: Any, vm: VmSize) -> Cloud:
    """The registry's component and model: lifecycle, allow list and defaults read from the model's tags."""
    from azure.core.exceptions import ResourceNotFoundError

    from common.azure import azure_errors
    from training.data_assets import ensure_data_assets

    name = request.model
    with step(f"registry {jobs.REGISTRY}: {jobs.REGISTRY_COMPONENT} and {name}"):
        with azure_errors(f"reading model {name} from registry {jobs.REGISTRY}"):
            try:
                model = registry_client.models.get(name, label="latest")
            except ResourceNotFoundError:
                models.check_registry_model(name, None)  # an archived, retired asset: say so and name the choices
                raise UserError(f"model {name} is not in registry {jobs.REGISTRY}. "
                                f"`python -m training.submit --list-models` shows the choices.") from None
        tags = dict(model.tags or {})
        models.check_registry_model(name, tags)
        allow = _parse_tag(tags, "finetune_compute_allow_list")
        if allow is not None and vm.name.lower() not in {str(s).lower() for s in allow}:
            raise UserError(
                f"{name} cannot be fine-tuned on {vm.name} (cluster {outputs.compute_name}); the registry allows "
                f"{', '.join(allow)}. Change the stack's compute VM size and run `pulumi up`."
            )
        with azure_errors(f"reading component {jobs.REGISTRY_COMPONENT} from registry {jobs.REGISTRY}"):
            component = registry_client.components.get(name=jobs.REGISTRY_COMPONENT, label="latest")
        say(f"    {name} version {model.version}; component {jobs.REGISTRY_COMPONENT} version {component.version}")
    registry_id = str(component.id or "")
    cloud = Cloud(vm=vm, train="", eval="", model_defaults=_parse_tag(tags, "model_specific_defaults") or {},
                  component_inputs=set(component.inputs) if component.inputs else None,
                  component_uri=registry_id if registry_id.startswith("azureml://") else jobs.registry_component_uri(),
                  model_uri=model.id if str(model.id or "").startswith("azureml://") else jobs.registry_model_uri(name))
    say(f"    parameters: {registry_params(request, cloud)}")  # refuses unknown inputs before any upload
    with step("data assets"):
        refs = ensure_data_assets(ml_client, files)
    cloud.train, cloud.eval = refs["train"], refs["eval"]
    return cloud


def submit_job(ml_client: Any, spec: dict[str, Any], outputs: Any, experiment: str) -> tuple[str, str]:
    """Load the spec with the SDK and create the job; prints its name (stdout) and Studio link (stderr)."""
    from common.azure import azure_errors, studio_url

    job = jobs.load(spec)
    with step(f"submitting job {spec['name']}"):
        with azure_errors("submitting the job", outputs.role_assignments_created_on):
            created = ml_client.jobs.create_or_update(job)
    name = created.name or spec["name"]
    url = created.studio_url or studio_url(outputs, f"runs/{name}")
    print(name, flush=True)
    say(f"    job {name} in experiment {experiment}: {url}")
    return name, url


def _az_args(outputs: Any) -> str:
    return f"-g {outputs.resource_group_name} -w {outputs.workspace_name}"


def _deploy_hint(name: str, experiment: str) -> str:
    if experiment == EXPERIMENT_NAME:
        return "Deploy it with `python -m deployment.deploy` (it finds this job)."
    return (f"Deploy it with `python -m deployment.deploy --job {name}` (deploy's own search looks only in "
            f"experiment {EXPERIMENT_NAME}, not {experiment}).")


def follow(ml_client: Any, name: str, outputs: Any, url: str, environment: Any, experiment: str = EXPERIMENT_NAME) -> int:
    """Stream the job's logs; the exit code is the job's final status. Ctrl-C stops following only."""
    from azure.ai.ml.exceptions import JobException

    from common.azure import azure_errors, studio_url

    stopped = (
        f"stopped following; job {name} keeps running. Resume: `az ml job stream -n {name} {_az_args(outputs)}`; "
        f"cancel: `az ml job cancel -n {name} {_az_args(outputs)}`; or watch it in Studio: {url}"
    )
    say(f"==> streaming the logs of {name} (Ctrl-C stops following, not the job)")
    try:
        with azure_errors(f"streaming job {name}"):
            ml_client.jobs.stream(name)
    except KeyboardInterrupt:
        say(stopped)
        return 130
    except JobException as err:
        if isinstance(err.__cause__, KeyboardInterrupt):
            say(stopped)
            return 130
        lines = [line for line in str(err).strip().splitlines() if line.strip()][-15:]
        detail = "\n".join(f"    {line}" for line in lines)
        hint = ""
        text = str(err).lower()
        if isinstance(environment, str) and ("image build" in text or "environment" in text or "conda" in text):
            from training.environment import environment_studio_path

            build_log = studio_url(outputs, environment_studio_path(environment))
            hint = f" The environment image may have failed to build; its build log: {build_log}"
        raise UserError(f"job {name} failed. Last lines:\n{detail}\nDetails and logs: {url}.{hint}") from None
    with azure_errors(f"reading job {name}"):
        status = str(ml_client.jobs.get(name).status or "unknown")
    if status == "Completed":
        say(f"<== job {name} completed. {_deploy_hint(name, experiment)}")
        return 0
    raise UserError(f"job {name} ended with status {status}. Details and logs: {url}")


@contextmanager
def _sdk_errors() -> Iterator[None]:
    """The SDK's own client-side refusals (validation, upload) as one message instead of a traceback."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - only the SDK's MlException family is translated
        from azure.ai.ml.exceptions import JobException, MlException

        if isinstance(err, MlException) and not isinstance(err, JobException):
            lines = [line for line in str(err).strip().splitlines() if line.strip()][:6]
            raise UserError("Azure ML refused the request: " + " ".join(lines)) from None
        raise
