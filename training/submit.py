"""`python -m training.submit`: fine-tune Phi-3 on the stack's Azure ML cluster (or locally).

    python -m training.submit                          # SFT command job on the stack's cluster
    python -m training.submit --recipe registry        # the Azure ML registry's chat_completion_pipeline
    python -m training.submit --target local --model tiny --max-steps 20   # offline, on this machine
    python -m training.submit --dry-run                # print the job YAML; no credential, no network

Steps on Azure: stack outputs -> data present locally -> MLClient -> cluster exists -> quota for
its VM family -> environment (reused when unchanged) -> data assets (uploaded once) -> job ->
submit -> job name and Studio link on stdout/stderr -> stream logs -> exit code from the job.
Only light imports at module level: `--help` never loads the Azure SDK, torch or TRL.
"""
from __future__ import annotations

import argparse
import json
import secrets
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from common.cli import UserError, run_cli, say, step
from training import hyperparams, local_runs
from training.discovery import EXPERIMENT_NAME

DEFAULT_SFT_MODEL = "microsoft/Phi-3.5-mini-instruct"
DEFAULT_REGISTRY_MODEL = "Phi-3-mini-4k-instruct"
TINY = "tiny"
REPO_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """Where `python -m training.data --out runs/data` puts the prepared splits (FINETUNE_PHI_RUNS moves it)."""
    return local_runs.runs_dir() / "data"


def _shm_size(text: str) -> str:
    """Docker's `<number><unit>` (b, k, m or g), as Azure ML expects; checked here, not on the cluster."""
    import re

    if not re.fullmatch(r"[1-9][0-9]*[bkmgBKMG]", text.strip()):
        raise argparse.ArgumentTypeError(f"expected a size such as 16g or 512m, got {text!r}")
    return text.strip().lower()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.submit",
        description=(
            "Fine-tune Phi-3: submit an Azure ML job on the stack's cluster (default), or train "
            "locally with the same trainer (--target local)."
        ),
    )
    where = parser.add_argument_group("where")
    where.add_argument("--target", choices=("azure", "local"), default="azure", help="run on Azure ML or on this machine (default: azure)")
    where.add_argument("--recipe", choices=("sft", "registry"), default="sft",
                       help="sft: this repo's TRL trainer as a command job; registry: Azure ML's chat_completion_pipeline (default: sft)")
    where.add_argument("--stack", default=None, help="Pulumi stack to read outputs from (default: the selected stack)")
    where.add_argument("--outputs-file", type=Path, default=None,
                       help="stack outputs JSON (`pulumi stack output --json > FILE`); also $STACK_OUTPUTS_FILE")
    what = parser.add_argument_group("what")
    what.add_argument("--model", default=None,
                      help=f"sft: Hugging Face id, local folder, azureml:NAME:VERSION or `tiny` (default {DEFAULT_SFT_MODEL}; "
                           f"`tiny` for --target local); registry: model name in registry azureml "
                           f"(default {DEFAULT_REGISTRY_MODEL}; e.g. Phi-3.5-mini-instruct)")
    what.add_argument("--data", type=Path, default=None,
                      help="folder with train.jsonl and test.jsonl from `python -m training.data` (default: runs/data)")
    how = parser.add_argument_group("how")
    how.add_argument("--instance-count", type=int, default=1, help="nodes to train on; PyTorch distribution when nodes x GPUs > 1 (default: 1)")
    how.add_argument("--shm-size", default="16g", type=_shm_size, help="shared memory per node for DataLoader workers and NCCL (default: 16g)")
    how.add_argument("--experiment", default=EXPERIMENT_NAME,
                     help=f"Azure ML experiment (default: {EXPERIMENT_NAME}, the only one `deployment.deploy` "
                          "searches for the latest job; deploy a job from another with --job NAME)")
    how.add_argument("--display-name", default=None, help="job display name (default: model-recipe-time)")
    how.add_argument("--dry-run", action="store_true",
                     help="print the job as YAML (local: the trainer command) and exit; no credential, no network")
    how.add_argument("--no-stream", action="store_true", help="submit and return; do not follow the logs")
    hyperparams.add_arguments(parser)
    return parser


# ---------------------------------------------------------------- shared helpers


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def _tags(args: argparse.Namespace, model: str, values: dict[str, Any], data_hash: str) -> dict[str, str]:
    config = json.dumps({"model": model, "instance_count": args.instance_count, **values}, separators=(",", ":"))
    return {"git_commit": _git_commit(), "data_hash": data_hash, "config": config[:1000], "model": model[:250]}


def _job_name(recipe: str) -> str:
    return f"finetune-phi-{recipe}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _display_name(args: argparse.Namespace, model: str) -> str:
    if args.display_name:
        return args.display_name
    short = Path(model.rstrip("/")).name.split(":")[0] or "model"
    return f"{short}-{args.recipe}-{time.strftime('%Y%m%d-%H%M')}"


def _resolve_sft_model(model: str | None, target: str) -> str:
    if model is None:
        model = TINY if target == "local" else DEFAULT_SFT_MODEL
    if model == TINY:
        from training.local_target import tiny_model

        return str(tiny_model())
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"--model {model} is a local path but not a Hugging Face model folder (no config.json).")
        return str(path.resolve())
    if model.startswith(("/", "./", "../", "~")) or path.is_absolute():
        # a Hugging Face id never looks like this; without the check a typo becomes a job that fails on the cluster
        raise UserError(f"--model {model}: no such folder. Pass a Hugging Face model id, an existing model folder, "
                        "azureml:NAME:VERSION or `tiny`.")
    return model


def _registry_model_name(model: str | None) -> str:
    if not model:
        return DEFAULT_REGISTRY_MODEL
    return model.rstrip("/").split("/")[-1]


def _check_instance_count(args: argparse.Namespace, max_nodes: int, compute: str) -> None:
    if args.instance_count < 1:
        raise UserError("--instance-count must be at least 1.")
    if args.instance_count > max_nodes:
        raise UserError(
            f"--instance-count {args.instance_count} is more than cluster {compute} can scale to ({max_nodes} nodes). "
            "Raise the stack's compute max nodes and run `pulumi up`, or ask for fewer nodes."
        )


def _registry_user_params(values: dict[str, Any]) -> dict[str, Any]:
    try:
        return hyperparams.registry_params(values)
    except hyperparams.NotOfferedByRegistry as err:
        raise UserError(
            f"{err} has no equivalent input in the registry's chat_completion_pipeline; "
            "drop it, or use --recipe sft (this repo's trainer takes every flag)."
        ) from None


# ---------------------------------------------------------------- local target


def _run_local(args: argparse.Namespace, values: dict[str, Any]) -> int:
    if args.recipe == "registry":
        raise UserError("--recipe registry runs Azure ML's own pipeline and exists only on Azure; use --target azure.")
    from training.data_assets import check_data

    data_dir = args.data or default_data_dir()
    files = check_data(data_dir, source_hint="sample")
    if args.dry_run:
        from training.local_target import trainer_command

        model = args.model or TINY
        # a dry run builds nothing: name the folder `tiny` would be built in
        model = str(local_runs.tiny_model_dir()) if model == TINY else _resolve_sft_model(model, "local")
        command = trainer_command(model, files.train.path, files.eval.path, local_runs.job_dir("<job>") / "model", values)
        print(" ".join(shlex.quote(part) for part in command))
        return 0
    from training.local_target import run_local

    model = _resolve_sft_model(args.model, "local")
    job_name, model_dir = run_local(model, files.train.path, files.eval.path, values, stream=not args.no_stream)
    print(job_name)
    say(f"    deploy it with `python -m deployment.deploy --target local` (it reads {local_runs.jobs_dir() / 'LATEST'})")
    return 0


# ---------------------------------------------------------------- Azure target


def _dry_run_azure(args: argparse.Namespace, outputs: Any, files: Any, values: dict[str, Any]) -> int:
    from training import jobs, quota
    from training.environment import environment_spec

    vm = quota.known_vm(outputs.compute_vm_size)
    gpus = vm.gpus if vm else 1
    if vm is None:
        say(f"    note: {outputs.compute_vm_size} is not in the offline size table; assuming 1 GPU per node")
    _check_instance_count(args, outputs.compute_max_nodes, outputs.compute_name)
    header = (
        f"finetune-phi {args.recipe} job (dry run) for workspace {outputs.workspace_name}, cluster {outputs.compute_name}.\n"
        "Data inputs are local paths here; a real submit registers them as versioned data assets"
        + (" and the environment as finetune-phi-train:<content hash>." if args.recipe == "sft" else ".")
        + "\nSubmit as is with: az ml job create -f FILE"
    )
    if args.recipe == "sft":
        # a dry run builds nothing: `tiny` names the folder it would be built in
        model = str(local_runs.tiny_model_dir()) if args.model == TINY else _resolve_sft_model(args.model, "azure")
        spec = environment_spec()
        job = jobs.SftJob(
            model=model,
            compute=outputs.compute_name,
            environment={"image": spec["image"], "conda_file": spec["conda_file"]},
            train_data=str(files.train.path),
            eval_data=str(files.eval.path),
            hyperparameters=values,
            instance_count=args.instance_count,
            gpus_per_node=gpus,
            shm_size=args.shm_size,
            tags=_tags(args, model, values, files.hash),
            display_name=_display_name(args, model),
            experiment_name=args.experiment,
        )
        body = jobs.build_sft_job(job)
    else:
        model_name = _registry_model_name(args.model)
        params = jobs.merge_registry_params(None, _registry_user_params(values))
        job = jobs.RegistryJob(
            model_uri=jobs.registry_model_uri(model_name),
            compute=outputs.compute_name,
            train_data=str(files.train.path),
            eval_data=str(files.eval.path),
            parameters=params,
            gpus_per_node=gpus,
            instance_count=args.instance_count,
            tags=_tags(args, model_name, values, files.hash),
            display_name=_display_name(args, model_name),
            experiment_name=args.experiment,
        )
        body = jobs.build_registry_job(job)
    sys.stdout.write(jobs.to_yaml(body, header=header))
    return 0


def _low_priority(compute: Any, outputs: Any) -> bool:
    """The cluster's VM priority (`tier` low_priority / LowPriority), else the stack's `compute_priority` output."""
    tier = getattr(compute, "tier", None) or outputs.extra.get("compute_priority") or ""
    return str(tier).replace("_", "").lower() == "lowpriority"


def _check_cluster(ml_client: Any, outputs: Any, args: argparse.Namespace) -> Any:
    """The cluster exists, fits the node count, and the subscription's quota fits the job. Returns its VmSize."""
    from azure.core.exceptions import ResourceNotFoundError

    from common.azure import azure_errors, with_retries
    from training import quota

    with azure_errors(f"reading cluster {outputs.compute_name}"):
        try:
            compute = with_retries(lambda: ml_client.compute.get(outputs.compute_name), action="cluster lookup")
        except ResourceNotFoundError as err:
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else "not found"
            raise UserError(
                f"compute cluster {outputs.compute_name} (or workspace {outputs.workspace_name} in resource group "
                f"{outputs.resource_group_name}) was not found ({first}). Run `pulumi up` for this stack, "
                "or pass the right --stack / --outputs-file."
            ) from None
    state = str(getattr(compute, "provisioning_state", "") or "")
    if state.lower() == "failed":
        raise UserError(
            f"cluster {outputs.compute_name} is in provisioning state Failed; delete it in Azure ML studio and run `pulumi up`."
        )
    vm_size = str(getattr(compute, "size", None) or outputs.compute_vm_size)
    if vm_size.lower() != outputs.compute_vm_size.lower():
        say(f"    note: cluster {outputs.compute_name} runs {vm_size}, the stack outputs say {outputs.compute_vm_size}; using {vm_size}")
    max_nodes = int(getattr(compute, "max_instances", None) or outputs.compute_max_nodes)
    _check_instance_count(args, max_nodes, outputs.compute_name)
    with azure_errors("listing VM sizes"):
        sizes = with_retries(lambda: list(ml_client.compute.list_sizes(location=outputs.location)), action="VM sizes")
    vm = quota.vm_info(vm_size, sizes)
    if vm.gpus < 1:
        raise UserError(f"cluster {outputs.compute_name} runs {vm.name}, which has no GPU; fine-tuning needs a GPU size.")
    with azure_errors(f"reading quota in {outputs.location}"):
        usages = with_retries(lambda: list(ml_client.compute.list_usage(location=outputs.location)), action="quota")
    quota.check_quota(usages, vm, args.instance_count, outputs.location, low_priority=_low_priority(compute, outputs))
    say(f"    cluster {outputs.compute_name}: {vm.name}, {vm.gpus} GPU(s) and {vm.vcpus} vCPUs per node, up to {max_nodes} nodes")
    return vm


def _sft_spec(ml_client: Any, args: argparse.Namespace, outputs: Any, files: Any, values: dict[str, Any], vm: Any) -> tuple[dict, dict]:
    from training import jobs
    from training.data_assets import ensure_data_assets
    from training.environment import ensure_environment, environment_spec

    env_spec = environment_spec()
    with step("training environment"):
        env_ref = ensure_environment(ml_client, env_spec)
    with step("data assets"):
        refs = ensure_data_assets(ml_client, files)
    model = _resolve_sft_model(args.model, "azure")
    job = jobs.SftJob(
        model=model,
        compute=outputs.compute_name,
        environment=env_ref,
        train_data=refs["train"],
        eval_data=refs["eval"],
        hyperparameters=values,
        instance_count=args.instance_count,
        gpus_per_node=vm.gpus,
        shm_size=args.shm_size,
        tags=_tags(args, model, values, files.hash),
        display_name=_display_name(args, model),
        name=_job_name("sft"),
        experiment_name=args.experiment,
    )
    return jobs.build_sft_job(job), env_spec


def _parse_tag(tags: dict[str, Any], key: str) -> Any:
    import ast

    raw = tags.get(key)
    if raw is None:
        return None
    if not isinstance(raw, str):
        return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise UserError(f"the registry model's tag {key} is not a Python literal ({raw[:80]!r}); report it or pin another model.") from None


def _registry_spec(ml_client: Any, registry_client: Any, args: argparse.Namespace, outputs: Any, files: Any,
                   values: dict[str, Any], vm: Any) -> dict:
    from common.azure import azure_errors, with_retries
    from training import jobs
    from training.data_assets import ensure_data_assets

    user = _registry_user_params(values)
    model_name = _registry_model_name(args.model)
    with step(f"registry {jobs.REGISTRY}: {jobs.REGISTRY_COMPONENT} and {model_name}"):
        with azure_errors(f"reading component {jobs.REGISTRY_COMPONENT} from registry {jobs.REGISTRY}"):
            component = with_retries(lambda: registry_client.components.get(name=jobs.REGISTRY_COMPONENT, label="latest"),
                                     action="registry component")
        with azure_errors(f"reading model {model_name} from registry {jobs.REGISTRY}"):
            model = with_retries(lambda: registry_client.models.get(model_name, label="latest"), action="registry model")
        tags = dict(getattr(model, "tags", None) or {})
        allow = _parse_tag(tags, "finetune_compute_allow_list")
        if allow is not None and vm.name.lower() not in {str(s).lower() for s in allow}:
            raise UserError(
                f"{model_name} cannot be fine-tuned on {vm.name} (cluster {outputs.compute_name}); the registry allows "
                f"{', '.join(allow)}. Change the stack's compute VM size and run `pulumi up`."
            )
        defaults = _parse_tag(tags, "model_specific_defaults") or {}
        inputs = getattr(component, "inputs", None)
        allowed = set(inputs) if isinstance(inputs, dict) and inputs else None
        try:
            params = jobs.merge_registry_params(defaults, user, allowed)
        except ValueError as err:
            raise UserError(f"the registry's {jobs.REGISTRY_COMPONENT} has no input {err}; drop that flag.") from None
        say(f"    {model_name} version {getattr(model, 'version', '?')}; parameters: {params}")
    with step("data assets"):
        refs = ensure_data_assets(ml_client, files)
    component_uri = getattr(component, "id", None)
    if not (isinstance(component_uri, str) and component_uri.startswith("azureml://")):
        component_uri = jobs.registry_component_uri()
    model_uri = getattr(model, "id", None)
    if not (isinstance(model_uri, str) and model_uri.startswith("azureml://")):
        model_uri = jobs.registry_model_uri(model_name)
    job = jobs.RegistryJob(
        model_uri=model_uri,
        compute=outputs.compute_name,
        train_data=refs["train"],
        eval_data=refs["eval"],
        parameters=params,
        gpus_per_node=vm.gpus,
        instance_count=args.instance_count,
        component_uri=component_uri,
        tags=_tags(args, model_name, values, files.hash),
        display_name=_display_name(args, model_name),
        name=_job_name("registry"),
        experiment_name=args.experiment,
    )
    return jobs.build_registry_job(job)


def _az_args(outputs: Any) -> str:
    return f"-g {outputs.resource_group_name} -w {outputs.workspace_name}"


def _deploy_hint(name: str, experiment: str) -> str:
    if experiment == EXPERIMENT_NAME:
        return "Deploy it with `python -m deployment.deploy` (it finds this job)."
    return (f"Deploy it with `python -m deployment.deploy --job {name}` (deploy's own search looks only in "
            f"experiment {EXPERIMENT_NAME}, not {experiment}).")


def _follow(ml_client: Any, name: str, outputs: Any, url: str, env_spec: dict | None,
            experiment: str = EXPERIMENT_NAME) -> int:
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
        if env_spec is not None and ("image build" in text or "environment" in text or "conda" in text):
            from training.environment import environment_studio_path

            hint = f" The environment image may have failed to build; its build log: {studio_url(outputs, environment_studio_path(env_spec))}"
        raise UserError(f"job {name} failed. Last lines:\n{detail}\nDetails and logs: {url}.{hint}") from None
    with azure_errors(f"reading job {name}"):
        status = str(getattr(ml_client.jobs.get(name), "status", "") or "unknown")
    if status == "Completed":
        say(f"<== job {name} completed. {_deploy_hint(name, experiment)}")
        return 0
    raise UserError(f"job {name} ended with status {status}. Details and logs: {url}")


def _run_azure(args: argparse.Namespace, values: dict[str, Any], ml_client: Any, registry_client: Any, credential: Any) -> int:
    from infra.outputs import load_stack_outputs
    from training.data_assets import check_data

    outputs = load_stack_outputs(args.outputs_file, args.stack)
    data_dir = args.data or default_data_dir()
    files = check_data(data_dir, source_hint="hf")
    if args.recipe == "registry":
        _registry_user_params(values)  # refuse trainer-only flags before touching Azure
    if args.dry_run:
        return _dry_run_azure(args, outputs, files, values)

    from common.azure import make_ml_client

    if ml_client is None or (args.recipe == "registry" and registry_client is None):
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
    if ml_client is None:
        ml_client = make_ml_client(outputs, credential)
    from infra.preflight import require  # the caller's rights, before anything bills (docs/INFRA.md)

    require(outputs, "submit", credential)
    say(f"==> workspace {outputs.workspace_name} ({outputs.resource_group_name}, {outputs.location}); stack: {outputs.source}")
    with _sdk_errors():
        return _submit_and_follow(args, values, outputs, files, ml_client, registry_client, credential)


@contextmanager
def _sdk_errors() -> Iterator[None]:
    """The SDK's own client-side refusals (validation, upload) as one message instead of a traceback."""
    from azure.ai.ml.exceptions import JobException, MlException

    try:
        yield
    except JobException:
        raise
    except MlException as err:
        lines = [line for line in str(err).strip().splitlines() if line.strip()][:6]
        raise UserError("Azure ML refused the request: " + " ".join(lines)) from None


def _submit_and_follow(args: argparse.Namespace, values: dict[str, Any], outputs: Any, files: Any,
                       ml_client: Any, registry_client: Any, credential: Any) -> int:
    from common.azure import azure_errors, studio_url, with_retries
    from training import jobs

    with step(f"checking cluster {outputs.compute_name} and quota"):
        vm = _check_cluster(ml_client, outputs, args)
    env_spec = None
    if args.recipe == "sft":
        spec, env_spec = _sft_spec(ml_client, args, outputs, files, values, vm)
    else:
        if registry_client is None:
            from azure.ai.ml import MLClient

            registry_client = MLClient(credential, registry_name=jobs.REGISTRY)  # no network until used
        spec = _registry_spec(ml_client, registry_client, args, outputs, files, values, vm)
    job = jobs.load(spec)
    with step(f"submitting job {spec['name']}"):
        with azure_errors("submitting the job"):
            created = with_retries(lambda: ml_client.jobs.create_or_update(job), action="job submission")
    name = getattr(created, "name", None) or spec["name"]
    url = getattr(created, "studio_url", None) or studio_url(outputs, f"runs/{name}")
    print(name, flush=True)
    say(f"    job {name} in experiment {args.experiment}: {url}")
    if args.no_stream:
        say(f"    follow it: `az ml job stream -n {name} {_az_args(outputs)}`; cancel: `az ml job cancel -n {name} {_az_args(outputs)}`")
        return 0
    return _follow(ml_client, name, outputs, url, env_spec, args.experiment)


def main(
    argv: Sequence[str] | None = None,
    *,
    ml_client: Any = None,
    registry_client: Any = None,
    credential: Any = None,
) -> int:
    """Entry point; tests inject fake MLClients (workspace and registry) at the network edge."""
    parser = build_parser()
    args = parser.parse_args(argv)
    values = hyperparams.given(args)
    try:
        hyperparams.check_with_trainer(values)
    except hyperparams.RefusedByTrainer as err:
        parser.error(str(err))  # usage line + exit 2, like any other bad flag
    if args.target == "local":
        return _run_local(args, values)
    return _run_azure(args, values, ml_client, registry_client, credential)


if __name__ == "__main__":
    run_cli(main)
