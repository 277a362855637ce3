"""python -m deployment.evaluate: score a deployment, or compare two endpoints with deploy's own gate (the CLI).

    python -m deployment.evaluate [--target azure|local] [--endpoint-name N] [--deployment D]
    python -m deployment.evaluate --compare URL_A URL_B [--model-a ID] [--model-b ID]
        [--judge URL --judge-model ID]      # exit 0: B not worse, 3: worse, 4: inconclusive, 1: error

The scoring is the library deployment/scoring.py and the decision deployment/gate.py, which
deploy's gate runs with the live deployment as A and the new one as B.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from common.cli import ArgumentParser, UserError, run_cli, say
from common.values import Range
from deployment.metrics import DEFAULT_MARGIN
from deployment.connection import PhiConnection
from deployment.scoring import CONCURRENCY, DEFAULT_LIMIT, client_on, load_eval_set, score_deployment, table, write_json
from infra.outputs import add_stack_arguments

KEY_ENV = {"a": "EVAL_KEY_A", "b": "EVAL_KEY_B"}
NO_KEY = "no-key-set"
"""Sent as the bearer token when EVAL_KEY_A / EVAL_KEY_B is unset (a local server checks none)."""
LIMIT = Range(1, 100_000, integer=True)  # conversations (and instruction prompts) scored; deploy's --eval-limit too
CONCURRENCY_RANGE = Range(1, 256, integer=True)
MARGIN = Range(0, 100)  # points of a signal in [0, 1]; deploy's --eval-margin too (NaN would switch the gate off)


# -- the command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m deployment.evaluate",
        description="Score a deployment on held-out conversations (correctness: token F1 against the reference cut "
        "to the reply's length) and IFEval-style instruction prompts, no judge model; prints a table and writes JSON "
        "under runs/eval/. With --compare, run deploy's evaluation gate on two OpenAI-compatible endpoints.",
        epilog="--compare exits 0 when B is not worse than A, 3 when it is worse, 4 when the comparison is "
        "inconclusive (reply lengths or max_tokens endings differ too much), 1 on an error. See docs/DEPLOY.md.",
    )
    add_stack_arguments(parser)
    parser.add_argument("--target", choices=("azure", "local"), default="azure", help="where the deployment runs (default: azure)")
    parser.add_argument("--endpoint-name", help="target azure: the endpoint (default: phi3-chat-<hash of the workspace>)")
    parser.add_argument("--deployment", help="target azure: the deployment (default: the one taking most traffic)")
    parser.add_argument("--eval-file", type=Path, help="JSONL of `messages` rows (default: runs/data/test.jsonl)")
    parser.add_argument("--instructions-file", type=Path,
                        help="instruction prompts in IFEval's JSONL format (default: deployment/eval_data/instructions.jsonl)")
    parser.add_argument("--limit", type=LIMIT, default=DEFAULT_LIMIT,
                        help=f"score the first N conversations and the first N instruction prompts, {LIMIT} "
                        "(default: %(default)s)")
    parser.add_argument("--concurrency", type=CONCURRENCY_RANGE, default=CONCURRENCY,
                        help=f"requests in flight, {CONCURRENCY_RANGE} (default: %(default)s)")
    compare = parser.add_argument_group("comparing two endpoints (A live, B candidate)")
    compare.add_argument("--compare", nargs=2, metavar=("URL_A", "URL_B"),
                         help="OpenAI-compatible base URLs (.../v1); keys from EVAL_KEY_A / EVAL_KEY_B when set")
    compare.add_argument("--model-a", help="the `model` to request from A (default: none sent)")
    compare.add_argument("--model-b", help="the `model` to request from B (default: none sent)")
    compare.add_argument("--deployment-a", help="A's azureml-model-deployment header (an Azure endpoint's deployment)")
    compare.add_argument("--deployment-b", help="B's azureml-model-deployment header")
    compare.add_argument("--eval-margin", type=MARGIN, default=DEFAULT_MARGIN, metavar="POINTS",
                         help="delta of the gate's test in points of each signal (F1 points for correctness, "
                         f"1 point = 0.01), {MARGIN}: B is worse only if its mean is below A's by more than this "
                         "beyond the noise (default: %(default)s)")
    compare.add_argument("--judge", metavar="URL", help="an OpenAI-compatible judge model: adds a pairwise win rate "
                         "(both answer orders; key from EVAL_JUDGE_KEY); it informs and does not decide")
    compare.add_argument("--judge-model", metavar="ID", help="the judge's `model`")
    return parser


def _check(args: argparse.Namespace) -> None:
    if args.compare is None:
        given = [flag for flag, value in (("--model-a", args.model_a), ("--model-b", args.model_b),
                                          ("--deployment-a", args.deployment_a), ("--deployment-b", args.deployment_b),
                                          ("--judge", args.judge), ("--judge-model", args.judge_model)) if value]
        if given:
            raise UserError(f"{', '.join(given)} apply to --compare URL_A URL_B only.")
    elif args.endpoint_name or args.deployment:
        raise UserError("--endpoint-name and --deployment pick a deployment to score; --compare takes two URLs instead.")
    if args.judge_model and not args.judge:
        raise UserError("--judge-model names the judge's model: pass the judge's URL with --judge too.")
    if args.concurrency < 1:
        raise UserError(f"--concurrency must be at least 1, got {args.concurrency}")


def _local_target(args: argparse.Namespace) -> tuple[Any, str, str, str]:
    import secrets

    from deployment.local import is_our_server, read_record

    if args.endpoint_name or args.deployment:
        raise UserError("--endpoint-name and --deployment apply to --target azure only.")
    record = read_record()
    if record is None or not is_our_server(record.pid, record.port):
        raise UserError("no local endpoint is running: start one with `python -m deployment.deploy --target local`.")
    # The local server checks no key; the flow's client needs one.
    return client_on(PhiConnection.probed(record.url, secrets.token_urlsafe(16))), "local", str(record.model_dir), ""


def _azure_target(args: argparse.Namespace) -> tuple[Any, str, str, str]:
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
        found = ml_client.online_deployments.get(name=deployment, endpoint_name=name)
        key = ml_client.online_endpoints.get_keys(name=name).primary_key
    client = client_on(PhiConnection.probed(str(endpoint.scoring_uri), key, deployment))  # where its /v1 answers
    return client, f"{name}/{deployment}", str(found.model), str(found.environment or "")


def score_one(args: argparse.Namespace) -> int:
    eval_set = load_eval_set(args.eval_file, args.limit, instructions_file=args.instructions_file)
    target: Callable[[argparse.Namespace], tuple[Any, str, str, str]] = (
        _local_target if args.target == "local" else _azure_target)
    client, label, model, environment = target(args)
    scores = score_deployment(client, eval_set, label=label, model=model, concurrency=args.concurrency,
                              environment=environment)
    path = write_json(scores, label.replace("/", "-"))
    print(table([scores]))
    say(f"{len(scores.rows)} conversation(s) and {len(scores.instruction_rows)} instruction prompt(s) scored in "
        f"{scores.seconds:.1f}s; replies and scores: {path}")
    return 0


def _side(url: str, side: str, model: str | None, deployment: str | None) -> Any:
    from urllib.parse import urlparse

    if urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
        raise UserError(f"--compare {side.upper()}: {url!r} is not an http(s) URL; pass the endpoint's base URL (.../v1)")
    return client_on(PhiConnection(url, os.environ.get(KEY_ENV[side]) or NO_KEY, deployment, api="openai"), model)


def compare_endpoints(args: argparse.Namespace) -> int:
    """Deploy's gate on two endpoints: A as the live model, B as the candidate; the exit code says the outcome."""
    from deployment import gate

    url_a, url_b = args.compare
    eval_set = load_eval_set(args.eval_file, args.limit, instructions_file=args.instructions_file)
    live_client = _side(url_a, "a", args.model_a, args.deployment_a)
    new_client = _side(url_b, "b", args.model_b, args.deployment_b)
    live = score_deployment(live_client, eval_set, label="A (live)", model=args.model_a or url_a,
                            concurrency=args.concurrency)
    new = score_deployment(new_client, eval_set, label="B (candidate)", model=args.model_b or url_b,
                           concurrency=args.concurrency)
    verdict = gate.decide(new, live, force=False, margin=args.eval_margin)
    if args.judge:
        from deployment import judge

        judge_client = client_on(PhiConnection(args.judge, os.environ.get(judge.KEY_ENV) or NO_KEY, api="openai"),
                                 args.judge_model)
        say(f"    {judge.pairwise(judge_client, new, live, concurrency=args.concurrency).sentence()}")
    print(f"{verdict.outcome}: {verdict.summary()}")
    return verdict.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check(args)
    return compare_endpoints(args) if args.compare else score_one(args)


if __name__ == "__main__":
    run_cli(main)
