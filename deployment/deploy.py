"""python -m deployment.deploy: the fine-tuned model behind a managed online endpoint (or locally).

Both targets run the one rollout (deployment/rollout.py): start the new deployment beside the
live one -> smoke test -> evaluation gate (new vs live on held-out conversations) -> promote ->
retire the old one -> Prompt flow connection. target azure (default): blue/green deployments on a
managed online endpoint with the stack's UAI (deployment/azure_deploy.py). target local:
`deployment.serve` in the background on 127.0.0.1 (deployment/local.py). `--dry-run` prints the
endpoint and deployment definitions as YAML, touching no credential or network.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from common.azure import quiet_sdk
from common.cli import ArgumentParser, UserError, run_cli, say
from deployment.definitions import DEFAULT_INSTANCE_TYPE
from deployment.evaluate import LIMIT as EVAL_LIMIT
from deployment.evaluate import MARGIN as EVAL_MARGIN
from deployment.metrics import DEFAULT_MARGIN
from deployment.scoring import DEFAULT_LIMIT
from infra.outputs import add_stack_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m deployment.deploy",
        description=(
            "Deploy the fine-tuned Phi-3 model: blue/green on an Azure ML managed online endpoint (default), "
            "or a local server (--target local). Writes the Prompt flow connection phi_endpoint."
        ),
        epilog=(
            "Costs money (target azure): the deployment's instance bills per hour until "
            "`python -m deployment.teardown` (Standard_NC24ads_A100_v4 about $3.67/h, list price East US)."
        ),
    )
    add_stack_arguments(parser)
    parser.add_argument("--target", choices=("azure", "local"), default="azure", help="where to deploy (default: azure)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--job", help="Azure ML job whose model output to deploy (default: the latest completed fine-tuning job)")
    which.add_argument("--model", metavar="NAME:VERSION", help="an already registered model to deploy")
    which.add_argument("--model-dir", help="target local: the model folder (default: the latest local training output)")
    parser.add_argument(
        "--instance-type",
        default=DEFAULT_INSTANCE_TYPE,
        help=f"VM size of the deployment (default: {DEFAULT_INSTANCE_TYPE}; needs 24+ vCPUs of A100 quota, see docs/DEPLOY.md)",
    )
    # -- serving scale (the vLLM issue): instances, and the base model the engine's caps are sized for
    parser.add_argument("--instance-count", type=int, default=1, metavar="N",
                        help="instances behind the endpoint (default 1); each bills; blue/green needs quota for 2N "
                             "while the new deployment starts beside the live one")
    parser.add_argument("--base-model", default="phi-3.5-mini", choices=("phi-3.5-mini", "phi-4-mini"),
                        help="the fine-tune's base model, for sizing concurrency, timeout and vLLM's caps per "
                             "instance type (default phi-3.5-mini; deployment/sizing.py)")
    parser.add_argument("--endpoint-name", help="endpoint name (default: phi3-chat-<hash of the workspace>)")
    parser.add_argument("--port", type=int, help="target local: port on 127.0.0.1 (default: a free one)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the endpoint and deployment definitions as YAML and stop"
    )
    gate = parser.add_argument_group("evaluation gate (docs/DEPLOY.md)")
    gate.add_argument("--eval-file", type=Path,
                      help="held-out conversations, JSONL of `messages` rows (default: runs/data/test.jsonl)")
    gate.add_argument("--eval-limit", type=EVAL_LIMIT, default=DEFAULT_LIMIT,
                      help=f"conversations and instruction prompts to score, each; {EVAL_LIMIT} (default: %(default)s)")
    gate.add_argument("--eval-margin", type=EVAL_MARGIN, metavar="POINTS",
                      help=f"delta of the gate's test, in points (F1 points for correctness; 1 point = 0.01), "
                      f"{EVAL_MARGIN} (default: {DEFAULT_MARGIN:g})")
    gate.add_argument("--force", action="store_true",
                      help="move traffic even when the gate refuses (worse than the live one, or inconclusive)")
    parser.add_argument("--expires-in", metavar="DURATION",
                        help="target azure: tag what this deploy creates to expire (30m, 2h, 1d); "
                        "`python -m deployment.teardown --expired` deletes it afterwards. Default: never expires")
    parser.add_argument(
        "--foundry-connection",
        action="store_true",
        help="also write phi_endpoint as a workspace connection in the stack's Foundry project",
    )
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if args.instance_count < 1:
        raise UserError(f"--instance-count must be at least 1, got {args.instance_count}")
    if args.target == "local":
        bad = [flag for flag, value in (("--job", args.job), ("--model", args.model), ("--dry-run", args.dry_run),
                                        ("--foundry-connection", args.foundry_connection),
                                        ("--endpoint-name", args.endpoint_name),
                                        ("--expires-in", args.expires_in),
                                        ("--instance-count", args.instance_count != 1)) if value]
        if bad:
            raise UserError(f"{', '.join(bad)} apply to --target azure only; --target local takes --model-dir and --port.")
    elif args.model_dir or args.port:
        raise UserError("--model-dir and --port apply to --target local; for azure pick the model with --job or --model.")
    _expires_at(args)  # a bad duration fails before anything else


def _expires_at(args: argparse.Namespace) -> datetime | None:
    from deployment.expiry import parse_duration

    return datetime.now(timezone.utc) + parse_duration(args.expires_in) if args.expires_in else None


def _dry_run(args: argparse.Namespace) -> int:
    from deployment import definitions
    from deployment.environment import serving_environment
    from deployment.registration import job_output_path, parse_model_ref
    from infra.outputs import load_stack_outputs

    outputs = load_stack_outputs(args.outputs_file, args.stack)
    name = definitions.check_endpoint_name(args.endpoint_name or definitions.default_endpoint_name(outputs))
    if args.model:
        model_name, version = parse_model_ref(args.model)
        model: object = f"azureml:{model_name}:{version}"
    elif args.job:
        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import Model

        model = Model(path=job_output_path(args.job, "model"), type=AssetTypes.MLFLOW_MODEL)
        say(f"note: the real deploy registers {job_output_path(args.job, '<output>')} as {definitions.MODEL_NAME}")
    else:
        model = f"azureml:{definitions.MODEL_NAME}@latest"
        say(f"note: the real deploy registers the latest completed fine-tuning job's model as {definitions.MODEL_NAME}")
    endpoint = definitions.build_endpoint(name, outputs)
    deployment = definitions.build_deployment(
        name="blue",
        endpoint_name=name,
        model=model,
        environment=serving_environment(args.instance_type).to_entity(),
        instance_type=args.instance_type,
        outputs=outputs,
        instance_count=args.instance_count,
        base_model=args.base_model,
    )
    from deployment.expiry import expiry_tags

    for entity in (endpoint, deployment):
        entity.tags.update(expiry_tags(_expires_at(args)))
    sys.stdout.write(definitions.definitions_yaml([endpoint, deployment]))
    from deployment.sizing import serving_size

    say(f"sizing: {serving_size(args.instance_type, args.base_model).describe()}")
    say(f"price: {_price(args.instance_type, args.instance_count)}")
    say("dry run: nothing was created (blue is the first slot; later deploys alternate blue/green)")
    return 0


def _azure(args: argparse.Namespace) -> int:
    from common import azure as azure_edge
    from deployment import definitions
    from deployment.azure_deploy import DeployPlan, deploy_to_azure
    from deployment.registration import ModelChoice
    from infra.outputs import load_stack_outputs

    outputs = load_stack_outputs(args.outputs_file, args.stack)
    info = definitions.instance_info(args.instance_type)
    if info is None:
        say(f"warning: {args.instance_type} is not one of the sizes this project documents "
            f"({', '.join(t.sku for t in definitions.INSTANCE_TYPES.values())}); its cost and quota are yours to check.")
    foundry = None
    if args.foundry_connection:
        from deployment.foundry import foundry_writer

        stack = [f"{flag} {value}" for flag, value in (("--stack", args.stack), ("--outputs-file", args.outputs_file),
                                                      ("--endpoint-name", args.endpoint_name)) if value]
        foundry = foundry_writer(outputs, azure_edge.make_ml_client, " ".join(["python -m deployment.foundry", *stack]))
    plan = DeployPlan(
        endpoint_name=args.endpoint_name or definitions.default_endpoint_name(outputs),
        instance_type=args.instance_type,
        choice=ModelChoice(job=args.job, model=args.model),
        foundry_connection=args.foundry_connection,
        eval_file=args.eval_file,
        eval_limit=args.eval_limit,
        force=args.force,
        margin=args.eval_margin,
        expires_at=_expires_at(args),
        instance_count=args.instance_count,
        base_model=args.base_model,
    )
    ml_client = azure_edge.make_ml_client(outputs)
    from infra.preflight import require  # the caller's rights, before anything bills (docs/INFRA.md)

    require(outputs, "deploy", foundry=args.foundry_connection)
    result = deploy_to_azure(ml_client, outputs, plan, foundry_writer=foundry)
    print(f"endpoint:   {result.endpoint_name}{' (created)' if result.endpoint_created else ''}")
    print(f"deployment: {result.deployment_name} on {args.instance_count} x {args.instance_type}, 100% of traffic")
    print(f"price:      {_price(args.instance_type, args.instance_count)}")
    print(f"model:      {result.model.name}:{result.model.version}"
          + (f" (from job {result.model.source_job})" if result.model.source_job else ""))
    print(f"scoring:    {result.scoring_uri}")
    if result.replaced:
        print(f"replaced:   {', '.join(result.replaced)} (deleted)")
    if result.verdict is not None:
        print(f"evaluation: {result.verdict.summary()}")
    print("connection: Prompt flow connection phi_endpoint written (key stored as its secret)")
    print('chat:       pf flow test --flow flows/chat --inputs question="Who founded Microsoft?"')
    if plan.expires_at is not None:
        from deployment.expiry import deleter_notice

        print(f"expires:    {deleter_notice(plan.expires_at)}")
    print("stop billing: python -m deployment.teardown --yes")
    return 0


def _price(instance_type: str, count: int = 1) -> str:
    """The hourly list price of the `count` instances deploy started (common/vm_sizes.py)."""
    from common.vm_sizes import known_vm

    size = known_vm(instance_type)
    if size is None or size.usd_per_hour is None:
        return f"unknown for {instance_type} (not in common/vm_sizes.py): check the Azure pricing page; it bills per hour"
    each = f" ({count} x ${size.usd_per_hour:.2f}/h)" if count > 1 else ""
    return (f"about ${count * size.usd_per_hour:.2f}/h{each} ({size.name}, list price East US) from now until "
            "teardown")


def _local(args: argparse.Namespace) -> int:
    from deployment.local import deploy_local

    endpoint = deploy_local(model_dir=Path(args.model_dir) if args.model_dir else None, port=args.port,
                            eval_file=args.eval_file, eval_limit=args.eval_limit, force=args.force,
                            margin=args.eval_margin)
    print(f"local endpoint: {endpoint.url}")
    print(f"server pid:     {endpoint.pid}")
    print('chat:           pf flow test --flow flows/chat --inputs question="Who founded Microsoft?"')
    print("stop it:        python -m deployment.teardown --target local")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    quiet_sdk()
    if args.target == "local":
        return _local(args)
    if args.dry_run:
        return _dry_run(args)
    return _azure(args)


if __name__ == "__main__":
    run_cli(main)
