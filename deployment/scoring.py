"""How well a deployment answers held-out conversations: the eval set, the scoring, the table (a library).

Each conversation is scored on its last assistant turn: the turns before it go to the
deployment through the Prompt flow's own client (greedy decoding, short replies, several
requests in flight), and the reply is compared with the reference (deployment/metrics.py).
The table (metric, mean, 95% CI, N) goes to stdout and every reply and score to a JSON file
under runs/eval/. Deploy's gate (deployment/gate.py) runs the same code on the new and the
live deployment before it moves traffic.
"""
from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from common.cli import UserError, say
from flows.chat.endpoint_urls import base_url, models_url  # the URL rules, shipped with the flow

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


def speaks_openai(scoring_url: str) -> bool:
    """True when the server answers the OpenAI routes of docs/ARCHITECTURE.md section 5 (`GET /v1/models`);
    a server with the tutorials' `/score` only (or the Azure ML inference server) does not."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(models_url(scoring_url), timeout=10.0) as response:
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
