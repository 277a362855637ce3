"""`python -m training.submit`: the command line that fine-tunes a Phi model on the stack's Azure ML cluster (or locally).

    python -m training.submit                          # SFT command job on the stack's cluster
    python -m training.submit --model microsoft/Phi-4-mini-instruct   # the other supported SFT model
    python -m training.submit --recipe registry        # the Azure ML registry's chat_completion_pipeline
    python -m training.submit --target local --model tiny --max-steps 20   # offline, on this machine
    python -m training.submit --dry-run                # print the job YAML; no credential, no network
    python -m training.submit --list-models            # the supported models

This module parses and resolves what was asked (models from training.models, flags checked by
the trainer's own parser); training.azure_submit runs the Azure steps and builds the job;
training.local_target runs the trainer here. Only light imports at module level: `--help` and
`--list-models` never load the Azure SDK, torch or TRL.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from common.cli import ArgumentParser, UserError, add_verbose_argument, run_cli, say
from infra.outputs import add_stack_arguments
from training import hyperparams, local_runs, models
from training.discovery import EXPERIMENT_NAME
from training.jobs import DEFAULT_SHM_SIZE

TINY = "tiny"


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
    parser = ArgumentParser(
        prog="python -m training.submit",
        description=(
            "Fine-tune a Phi model: submit an Azure ML job on the stack's cluster (default), or train "
            "locally with the same trainer (--target local)."
        ),
    )
    where = parser.add_argument_group("where")
    where.add_argument("--target", choices=("azure", "local"), default="azure", help="run on Azure ML or on this machine (default: azure)")
    where.add_argument("--recipe", choices=("sft", "registry"), default="sft",
                       help="sft: this repo's TRL trainer as a command job; registry: Azure ML's chat_completion_pipeline (default: sft)")
    add_stack_arguments(where)
    what = parser.add_argument_group("what")
    what.add_argument("--model", default=None,
                      help=f"sft: Hugging Face id (supported ones train from a pinned commit), local folder, registered "
                           f"model azureml:NAME:VERSION, or `tiny` (default {models.DEFAULT_SFT_MODEL}; `tiny` for --target "
                           f"local); registry: a model name in registry azureml (default {models.DEFAULT_REGISTRY_MODEL}, the "
                           "current Phi it fine-tunes; Phi-3/3.5 are retired there, Phi-4-mini is not offered: use --recipe sft). "
                           "See --list-models")
    what.add_argument("--list-models", action="store_true",
                      help="print the supported models (context, A100 80 GB memory needs, status, pinned revision) and exit")
    what.add_argument("--data", type=Path, default=None,
                      help="folder with train.jsonl and test.jsonl from `python -m training.data` (default: runs/data)")
    how = parser.add_argument_group("how")
    how.add_argument("--instance-count", type=int, default=1, help="nodes to train on; PyTorch distribution when nodes x GPUs > 1 (default: 1)")
    how.add_argument("--shm-size", default=DEFAULT_SHM_SIZE, type=_shm_size,
                     help=f"shared memory per node for DataLoader workers and NCCL (default: {DEFAULT_SHM_SIZE})")
    how.add_argument("--experiment", default=EXPERIMENT_NAME,
                     help=f"Azure ML experiment (default: {EXPERIMENT_NAME}, the only one `deployment.deploy` "
                          "searches for the latest job; deploy a job from another with --job NAME)")
    how.add_argument("--display-name", default=None, help="job display name (default: model-recipe-time)")
    how.add_argument("--dry-run", action="store_true",
                     help="print the job as YAML (local: the trainer command) and exit; no credential, no network")
    how.add_argument("--no-stream", action="store_true", help="submit and return; do not follow the logs")
    again = parser.add_argument_group("resume")
    again.add_argument("--resume", choices=("auto", "never"), default="auto",
                       help="auto: continue the newest unfinished run with the same key (model, data, settings) from its "
                            "newest complete checkpoint (local: runs/jobs/<key>; azure: the newest unfinished job tagged "
                            "resume-key, looked up at submit time); never: start over (default: auto)")
    again.add_argument("--resume-from", default=None, metavar="JOB_OR_PATH",
                       help="start from another run's newest complete checkpoint: an Azure ML job name (its `checkpoints` "
                            "output), a local job name under runs/jobs, or a checkpoint folder")
    again.add_argument("--force", action="store_true",
                       help="with --resume-from: accept a checkpoint of another run key or world size")
    add_verbose_argument(how)
    hyperparams.add_arguments(parser)
    return parser


# ---------------------------------------------------------------- resolving what was asked


def resolve_sft_model(model: str | None, target: str, *, build_tiny: bool = True) -> tuple[str, str | None]:
    """(model, pinned hub revision): `tiny` -> its folder (built unless a dry run), a folder -> its absolute
    path, a supported hub id or short name -> the id and the table's commit, anything else as given."""
    if model is None:
        model = TINY if target == "local" else models.DEFAULT_SFT_MODEL
    if model == TINY:
        if not build_tiny:  # a dry run builds nothing: name the folder `tiny` would be built in
            return str(local_runs.tiny_model_dir()), None
        from training.local_target import tiny_model

        return str(tiny_model()), None
    if model.startswith("azureml:"):
        return model, None
    path = Path(model).expanduser()
    if path.exists():
        from training.trainer import model_source

        try:
            model_source.resolve(str(path))  # the trainer's own check: a save_pretrained or an MLflow model folder
        except model_source.NotAModelFolder as err:
            raise UserError(f"--model {err}") from None
        return str(path.resolve()), None
    if model.startswith(("/", "./", "../", "~")) or path.is_absolute():
        # a Hugging Face id never looks like this; without the check a typo becomes a job that fails on the cluster
        raise UserError(f"--model {model}: no such folder. Pass a Hugging Face model id, an existing model folder, "
                        "azureml:NAME:VERSION or `tiny`.")
    known = models.find(model)
    if known is not None and known.hub_id is None:
        raise UserError(f"--model {model} is offered only to --recipe registry (see --list-models); "
                        f"for --recipe sft pick a hub model such as {models.CURRENT_SFT_CHOICE}.")
    hub_id, revision = models.hub_model(model)
    if revision is None:
        say(f"    note: {hub_id} is not in the supported-model table (`--list-models`): no pinned revision, "
            "the job trains from the hub's current main.")
    return hub_id, revision


def azure_request(args: argparse.Namespace, values: dict[str, Any]) -> Any:
    """The azure_submit.Request for these flags; refuses what can be refused before any network call."""
    from training.azure_submit import Request, user_registry_params

    if args.recipe == "registry":
        if args.resume_from:
            raise UserError("--resume-from continues this repository's trainer (--recipe sft); the registry pipeline "
                            "keeps no checkpoints of ours.")
        user_registry_params(values)  # trainer-only flags and a fractional --epochs stop here
        model, revision = models.registry_name(args.model), None
    else:
        model, revision = resolve_sft_model(args.model, "azure", build_tiny=not args.dry_run)
    return Request(
        recipe=args.recipe, model=model, model_revision=revision, hyperparameters=values,
        data_dir=args.data or default_data_dir(), instance_count=args.instance_count, shm_size=args.shm_size,
        experiment=args.experiment, display_name=args.display_name, outputs_file=args.outputs_file,
        stack=args.stack, no_stream=args.no_stream, resume=args.resume, resume_from=args.resume_from, force=args.force,
    )


# ---------------------------------------------------------------- local target


def _run_local(args: argparse.Namespace, values: dict[str, Any]) -> int:
    if args.recipe == "registry":
        raise UserError("--recipe registry runs Azure ML's own pipeline and exists only on Azure; use --target azure.")
    from training import local_target
    from training.data_assets import check_data

    data_dir = args.data or default_data_dir()
    files = check_data(data_dir, source_hint="sample")
    model, _ = resolve_sft_model(args.model, "local", build_tiny=not args.dry_run)
    key = run_key(model, None, files, values)
    if args.dry_run:
        folder = local_target.run_folder(key, args.resume, fresh=args.resume_from is not None)
        say(folder.note + (f"; --resume-from {args.resume_from}" if args.resume_from else ""))
        job = local_runs.job_dir(folder.name)
        flags = ["--checkpoint_dir", str(job / local_target.CHECKPOINTS), "--run_key", key]
        command = local_target.trainer_command(model, files.train.path, files.eval.path, job / "model", values, flags)
        print(" ".join(shlex.quote(part) for part in command))
        return 0
    job_name, model_dir = local_target.run_local(model, files.train.path, files.eval.path, values, key=key,
                                                 resume=args.resume, resume_from=args.resume_from, force=args.force,
                                                 stream=not args.no_stream)
    print(job_name)
    say(f"    deploy it with `python -m deployment.deploy --target local` (it reads {local_runs.jobs_dir() / 'LATEST'})")
    return 0


def run_key(model: str, revision: str | None, files: Any, values: dict[str, Any]) -> str:
    """The run key (training.run_key) of this model, these data files and these settings, as the trainer resolves them."""
    from training import run_key as keys

    return keys.compute(model, revision, files.train.sha256, files.eval.sha256, hyperparams.resolved(values))


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
    if args.list_models:
        sys.stdout.write(models.table())
        return 0
    values = hyperparams.given(args)
    try:
        hyperparams.check_with_trainer(values)
    except hyperparams.RefusedByTrainer as err:
        parser.error(str(err))  # usage line + exit 2, like any other bad flag
    if args.target == "local":
        return _run_local(args, values)
    from training import azure_submit

    return azure_submit.run(azure_request(args, values), ml_client=ml_client, registry_client=registry_client,
                            credential=credential, dry_run=args.dry_run)


if __name__ == "__main__":
    run_cli(main)
