"""python -m deployment.evaluate: score a deployment's answers on held-out conversations (the CLI).

The scoring itself is the library deployment/scoring.py, which deploy's gate uses too.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Sequence

from common.cli import UserError, run_cli, say
from deployment.scoring import CONCURRENCY, DEFAULT_LIMIT, client_for, load_eval_set, score_deployment, speaks_openai, table, write_json
from infra.outputs import add_stack_arguments


# -- the command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deployment.evaluate",
        description="Score a deployment's answers on held-out conversations against their reference replies "
        "(token F1 and ROUGE-L, no judge model); prints a table and writes JSON under runs/eval/.",
    )
    add_stack_arguments(parser)
    parser.add_argument("--target", choices=("azure", "local"), default="azure", help="where the deployment runs (default: azure)")
    parser.add_argument("--endpoint-name", help="target azure: the endpoint (default: phi3-chat-<hash of the workspace>)")
    parser.add_argument("--deployment", help="target azure: the deployment (default: the one taking most traffic)")
    parser.add_argument("--eval-file", type=Path, help="JSONL of `messages` rows (default: runs/data/test.jsonl)")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="score the first N conversations (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="requests in flight (default: %(default)s)")
    return parser


def _local_target(args: argparse.Namespace) -> tuple[Any, str, str]:
    import secrets

    from deployment.local import is_our_server, read_record

    if args.endpoint_name or args.deployment:
        raise UserError("--endpoint-name and --deployment apply to --target azure only.")
    record = read_record()
    if record is None or not is_our_server(record.pid, record.port):
        raise UserError("no local endpoint is running: start one with `python -m deployment.deploy --target local`.")
    # The local server checks no key; the flow's client needs one.
    api = "openai" if speaks_openai(record.url) else None
    return client_for(record.url, secrets.token_urlsafe(16), api=api), "local", str(record.model_dir)


def _azure_target(args: argparse.Namespace) -> tuple[Any, str, str]:
    from common import azure as azure_edge
    from common.azure import azure_errors, quiet_sdk
    from deployment import definitions
    from infra.outputs import load_stack_outputs

    quiet_sdk()
    outputs = load_stack_outputs(args.outputs_file, args.stack)
    ml_client = azure_edge.make_ml_client(outputs)
    name = definitions.check_endpoint_name(args.endpoint_name or definitions.default_endpoint_name(outputs))
    with azure_errors(f"reading endpoint {name}"):
        endpoint = ml_client.online_endpoints.get(name=name)
        traffic = {k: int(v or 0) for k, v in (endpoint.traffic or {}).items()}
        deployment = args.deployment or max(traffic, key=lambda k: traffic[k], default=None)
        if not deployment:
            raise UserError(f"endpoint {name} has no deployment: deploy one with `python -m deployment.deploy`.")
        model = str(ml_client.online_deployments.get(name=deployment, endpoint_name=name).model)
        key = ml_client.online_endpoints.get_keys(name=name).primary_key
    return client_for(str(endpoint.scoring_uri), key, deployment, api="openai"), f"{name}/{deployment}", model


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    eval_set = load_eval_set(args.eval_file, args.limit)
    target: Callable[[argparse.Namespace], tuple[Any, str, str]] = _local_target if args.target == "local" else _azure_target
    client, label, model = target(args)
    scores = score_deployment(client, eval_set, label=label, model=model, concurrency=args.concurrency)
    path = write_json(scores, label.replace("/", "-"))
    print(table([scores]))
    say(f"{len(scores.rows)} conversation(s) scored in {scores.seconds:.1f}s; replies and scores: {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
