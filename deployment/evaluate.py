"""python -m deployment.evaluate: how well a deployment answers held-out conversations.

Each conversation is scored on its last assistant turn: the turns before it go to the
deployment through the Prompt flow's own client (greedy decoding, short replies, several
requests in flight), and the reply is compared with the reference (deployment/metrics.py).
The table (metric, mean, 95% CI, N) goes to stdout and every reply and score to a JSON file
under runs/eval/. Deploy's gate (deployment/gate.py) runs the same code on the new and the
live deployment before it moves traffic.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from infra.outputs import add_stack_arguments
from common.cli import UserError, run_cli, say

DEFAULT_LIMIT = 32
"""Tens of conversations: enough for a paired comparison to see a broken model, a few minutes on Azure."""
MAX_TOKENS = 64
CONCURRENCY = 8
TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Conversation:
    id: str
    history: list[dict[str, str]]
    question: str
    reference: str


@dataclass(frozen=True)
class EvalSet:
    path: Path
    conversations: tuple[Conversation, ...]
    sha256: str
    """Of the conversations as scored (so a different --limit is a different set)."""


def default_eval_file() -> Path:
    """The data's held-out split, where `training.data` / submit put it (runs/data/test.jsonl)."""
    from training import local_runs

    return local_runs.runs_dir() / "data" / "test.jsonl"


def _conversation(row: Any, where: str) -> Conversation | None:
    """The turns before the last assistant reply, and that reply; None when the row has no such shape."""
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or len(messages) < 2:
        return None
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
        return None
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    if last < 1 or messages[last - 1].get("role") != "user" or not messages[last]["content"].strip():
        return None
    history = [{"role": str(m["role"]), "content": m["content"]} for m in messages[: last - 1]]
    return Conversation(where, history, messages[last - 1]["content"], messages[last]["content"])


def load_eval_set(path: Path | None = None, limit: int | None = DEFAULT_LIMIT) -> EvalSet:
    """The first `limit` scorable conversations of a JSONL file of `messages` rows."""
    path = Path(path) if path is not None else default_eval_file()
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if not path.is_file():
        raise UserError(
            f"no evaluation file {path}: prepare the data with `python -m training.data --source sample --out "
            f"{path.parent}` (its test split is the default), or pass --eval-file FILE.jsonl"
        )
    picked: list[Conversation] = []
    with open(path, encoding="utf-8") as rows:
        for number, line in enumerate(rows, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}, line {number}: not JSON ({err.msg}); each line must be one chat row") from None
            conversation = _conversation(row, f"line-{number}")
            if conversation is not None:
                picked.append(conversation)
            if limit is not None and len(picked) == limit:
                break
    if not picked:
        raise UserError(f"{path} holds no conversation ending in a user turn and an assistant reply to score")
    digest = hashlib.sha256(
        json.dumps([[c.id, c.history, c.question, c.reference] for c in picked], sort_keys=True).encode()
    ).hexdigest()
    return EvalSet(path, tuple(picked), digest)


@dataclass
class Scores:
    """One deployment's replies and scores on an EvalSet."""

    label: str
    model: str
    eval_sha256: str
    metric_version: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    eval_file: str = ""

    def values(self, metric: str) -> list[float]:
        return [float(row["scores"][metric]) for row in self.rows]

    def stats(self) -> dict[str, Any]:
        from deployment.metrics import METRICS, summarize

        return {metric: summarize(self.values(metric)) for metric in METRICS}

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label, "model": self.model, "eval_file": self.eval_file, "eval_sha256": self.eval_sha256,
            "metric_version": self.metric_version, "seconds": round(self.seconds, 2),
            "summary": {metric: stat.as_dict() for metric, stat in self.stats().items()},
            "conversations": self.rows,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Scores":
        return cls(str(data["label"]), str(data["model"]), str(data["eval_sha256"]), str(data["metric_version"]),
                   list(data["conversations"]), float(data.get("seconds", 0.0)), str(data.get("eval_file", "")))


def base_url(scoring_url: str) -> str:
    """`http://host:port/score` -> `http://host:port`: the base URL the OpenAI API hangs off."""
    return scoring_url.rstrip("/").removesuffix("/score")


def speaks_openai(scoring_url: str) -> bool:
    """True when the server answers the OpenAI routes of docs/ARCHITECTURE.md section 5 (`GET /v1/models`);
    a server with the tutorials' `/score` only (or the Azure ML inference server) does not."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(base_url(scoring_url) + "/v1/models", timeout=10.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def client_for(url: str, key: str, deployment: str | None = None, *, api: str | None = None) -> Any:
    """The flow's own client on a deployment (`deployment` pins one behind an Azure endpoint).

    `url` is the scoring URL; with `api="openai"` the client calls `{base}/v1/chat/completions`,
    as the flow does when the connection says so.
    """
    from flows.chat.phi_client import PhiClient

    endpoint = base_url(url) if api == "openai" else url
    return PhiClient(endpoint, key, deployment, timeout=TIMEOUT_S, max_retries=3, backoff=1.0, api=api)


def score_deployment(
    client: Any,
    eval_set: EvalSet,
    *,
    label: str,
    model: str,
    concurrency: int = CONCURRENCY,
    max_tokens: int = MAX_TOKENS,
) -> Scores:
    """Ask every conversation (`concurrency` in flight), score each reply; progress on stderr."""
    from deployment.metrics import metric_version, score
    from flows.chat.phi_client import EndpointError

    def ask(conversation: Conversation) -> dict[str, Any]:
        reply = client.chat(conversation.question, conversation.history, max_tokens=max_tokens, temperature=0.0)
        return {"id": conversation.id, "reply": reply.text, "reference": conversation.reference,
                "finish_reason": reply.finish_reason, "scores": score(reply.text, conversation.reference)}

    total = len(eval_set.conversations)
    say(f"    evaluating {label} on {total} conversation(s) from {eval_set.path} ({concurrency} in flight)")
    started = time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    next_note = started + 5.0
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(ask, c) for c in eval_set.conversations]
        try:
            for future in as_completed(futures):
                row = future.result()
                rows[row["id"]] = row
                if time.perf_counter() >= next_note or len(rows) == total:
                    say(f"    {label}: {len(rows)}/{total} scored ({time.perf_counter() - started:.0f}s)")
                    next_note = time.perf_counter() + 5.0
        except EndpointError as err:
            for pending in futures:
                pending.cancel()
            raise UserError(f"evaluating {label}: {err}") from None
    ordered = [rows[c.id] for c in eval_set.conversations]
    return Scores(label, model, eval_set.sha256, metric_version(), ordered, time.perf_counter() - started,
                  str(eval_set.path))


def _ci(low: float, high: float) -> str:
    return f"[{low:+.3f}, {high:+.3f}]" if low < 0 or high < 0 else f"[{low:.3f}, {high:.3f}]"


def table(columns: Sequence[Scores], comparison: Any = None) -> str:
    """metric | deployment | mean | 95% CI | N; with a comparison, a `new - live` row for the gate metric."""
    from deployment.metrics import GATE_METRIC, METRICS

    width = max([len("deployment"), len("new - live")] + [len(s.label) for s in columns])
    lines = [f"{'metric':<8} {'deployment':<{width}} {'mean':>7}  {'95% CI':<18} {'N':>4}"]
    for metric in METRICS:
        for scores in columns:
            stat = scores.stats()[metric]
            lines.append(f"{metric:<8} {scores.label:<{width}} {stat.mean:>7.3f}  {_ci(stat.low, stat.high):<18} {stat.n:>4}")
        if comparison is not None and metric == GATE_METRIC:
            d = comparison.difference
            lines.append(f"{metric:<8} {'new - live':<{width}} {d.mean:>+7.3f}  {_ci(d.low, d.high):<18} {d.n:>4}")
    return "\n".join(lines)


def write_json(scores: Scores, name: str) -> Path:
    """runs/eval/<UTC time>-<name>.json, written whole (never a partial file)."""

    from training import local_runs

    from common.files import write_atomic

    safe = "-".join("".join(ch if ch.isalnum() or ch in "_." else " " for ch in name).split())
    path = local_runs.runs_dir() / "eval" / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{safe}.json"
    write_atomic(path, json.dumps(scores.to_json(), indent=1) + "\n")
    return path


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
    from common.azure import azure_errors
    from deployment import definitions
    from deployment.deploy import quiet_sdk
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
