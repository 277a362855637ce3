"""How well a deployment answers: the eval set, the scoring, the table (a library).

Two signals, both judge-free (docs/DEPLOY.md, "The evaluation gate"):
- correctness: held-out conversations, each scored on its last assistant turn. The turns before it
  go to the deployment through the Prompt flow's own client (greedy decoding, room to finish:
  `metrics.max_tokens_for` the reference), and the reply is scored against the reference with
  `metrics.f1_cut` (token F1 against the reference cut to the reply's length).
- instructions: IFEval-style prompts with verifiable instructions (deployment/instructions.py);
  each prompt scores the share of its instructions the reply follows.
Both report the mean reply length and the share of replies that ended by `length`. The table goes
to stdout and every reply and score to a JSON file under runs/eval/. Deploy's gate
(deployment/gate.py) runs the same code on the new and the live deployment before it moves traffic.
"""
from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from common.cli import UserError, say

if TYPE_CHECKING:  # pragma: no cover
    from deployment.connection import PhiConnection
    from deployment.instructions import InstructionPrompt

DEFAULT_LIMIT = 200
"""Conversations (and instruction prompts) per signal: with the default margin, a 5-point drop in
correctness is refused at least 80% of the time at the spread measured on the fixture (docs/DEPLOY.md)."""
CONCURRENCY = 8
TIMEOUT_S = 120.0
SIGNALS = ("correctness", "instructions")
"""The gate's two signals, in table order."""


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
    """Of the conversations and prompts as scored (so a different --limit is a different set)."""
    prompts: tuple["InstructionPrompt", ...] = ()
    """The instruction-following prompts (empty: that signal is off)."""
    prompts_path: str = ""


def default_eval_file() -> Path:
    """The data's held-out split, where `training.data` / submit put it (runs/data/test.jsonl)."""
    from common import runs

    return runs.default_eval_file()


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


def _load_conversations(path: Path, limit: int | None) -> list[Conversation]:
    if not path.is_file():
        raise UserError(
            f"no evaluation file {path}: prepare the data with `python -m training.data --source sample --out "
            f"{path.parent}` (its test split is the default), or pass --eval-file FILE.jsonl"
        )
    from common.files import jsonl_rows

    picked: list[Conversation] = []
    for number, row in jsonl_rows(path, "one chat row"):
        conversation = _conversation(row, f"line-{number}")
        if conversation is not None:
            picked.append(conversation)
        if limit is not None and len(picked) == limit:
            break
    if not picked:
        raise UserError(f"{path} holds no conversation ending in a user turn and an assistant reply to score")
    return picked


def load_eval_set(path: Path | None = None, limit: int | None = DEFAULT_LIMIT, *,
                  instructions_file: Path | None = None, instructions: bool = True) -> EvalSet:
    """The first `limit` scorable conversations of a JSONL file of `messages` rows, and the first `limit`
    instruction prompts (IFEval format; default deployment/eval_data/instructions.jsonl) unless `instructions` is off."""
    from deployment.instructions import load_prompts

    path = Path(path) if path is not None else default_eval_file()
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    picked = _load_conversations(path, limit)
    prompts: tuple[InstructionPrompt, ...] = ()
    prompts_path = ""
    if instructions:
        prompts, skipped = load_prompts(instructions_file, limit)
        prompts_path = str(instructions_file or "deployment/eval_data/instructions.jsonl")
        if skipped:
            say(f"    {skipped} instruction prompt(s) skipped: they need a checker this project does not have "
                "(docs/DEPLOY.md)")
    digest = hashlib.sha256(json.dumps(
        [[[c.id, c.history, c.question, c.reference] for c in picked], [p.as_row() for p in prompts]],
        sort_keys=True).encode()).hexdigest()
    return EvalSet(path, tuple(picked), digest, prompts, prompts_path)


def _reply_stats(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean reply length in words, and the share of replies cut off by max_tokens (`length`)."""
    if not rows:
        return {"mean_words": float("nan"), "length_share": float("nan")}
    return {"mean_words": sum(int(r["words"]) for r in rows) / len(rows),
            "length_share": sum(r.get("finish_reason") == "length" for r in rows) / len(rows)}


@dataclass
class Scores:
    """One deployment's replies and scores on an EvalSet."""

    label: str
    model: str
    eval_sha256: str
    metric_version: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    """Per conversation: the correctness signal."""
    seconds: float = 0.0
    eval_file: str = ""
    instruction_rows: list[dict[str, Any]] = field(default_factory=list)
    """Per instruction prompt: the instruction-following signal."""
    environment: str = ""
    """The deployment's serving environment (NAME:VERSION, content-hashed) when known."""

    def values(self, metric: str) -> list[float]:
        return [float(row["scores"][metric]) for row in self.rows]

    def signal(self, name: str) -> list[float]:
        """The per-item values the gate tests: correctness per conversation, instruction share per prompt."""
        from deployment.metrics import GATE_METRIC

        if name == "correctness":
            return self.values(GATE_METRIC)
        return [float(row["score"]) for row in self.instruction_rows]

    def signal_rows(self, name: str) -> list[dict[str, Any]]:
        return self.rows if name == "correctness" else self.instruction_rows

    def signals(self) -> tuple[str, ...]:
        return tuple(name for name in SIGNALS if self.signal_rows(name))

    def stats(self) -> dict[str, Any]:
        """Per signal: the mean with its 95% t-interval, the reply stats; IFEval's accuracies for instructions."""
        from deployment.instructions import accuracy
        from deployment.stats import interval

        out: dict[str, Any] = {}
        for name in self.signals():
            out[name] = {**interval(self.signal(name), bounds=(0.0, 1.0)).as_dict(), **_reply_stats(self.signal_rows(name))}
        if self.instruction_rows:
            out["instructions"].update(accuracy(self.instruction_rows))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label, "model": self.model, "environment": self.environment, "eval_file": self.eval_file,
            "eval_sha256": self.eval_sha256, "metric_version": self.metric_version, "seconds": round(self.seconds, 2),
            "summary": self.stats(), "conversations": self.rows, "instructions": self.instruction_rows,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Scores":
        return cls(str(data["label"]), str(data["model"]), str(data["eval_sha256"]), str(data["metric_version"]),
                   list(data["conversations"]), float(data.get("seconds", 0.0)), str(data.get("eval_file", "")),
                   list(data.get("instructions", [])), str(data.get("environment", "")))


def client_on(connection: "PhiConnection", model: str | None = None) -> Any:
    """The flow's own client, called as the connection says (`deployment` pins one behind an Azure endpoint).

    `model`, when given, is sent as the request's `model` (servers that serve several models need it).
    """
    from flows.chat.phi_client import PhiClient

    client = PhiClient(connection.endpoint, connection.key, connection.deployment, timeout=TIMEOUT_S, max_retries=3,
                       backoff=1.0, api=connection.api)
    return _WithModel(client, model) if model else client


class _WithModel:
    """A PhiClient whose every chat request names `model` (the client itself sends none)."""

    def __init__(self, client: Any, model: str) -> None:
        self.client, self.model = client, model
        self.url = client.url

    def chat(self, question: str, history: list[dict] | None = None, **params: Any) -> Any:
        from flows.chat.phi_client import build_messages, build_payload

        messages = build_messages(question, history, budget_chars=self.client.history_budget_chars)
        payload = build_payload(messages, "contract", {**self.client.default_params, **params})
        return self.client.send({"model": self.model, **payload})


def _conversation_row(c: Conversation, budget: int, reply: Any) -> dict[str, Any]:
    from deployment import metrics

    return {"id": c.id, "question": c.question, "reply": reply.text, "reference": c.reference, "max_tokens": budget,
            "finish_reason": reply.finish_reason, "words": metrics.reply_words(reply.text),
            "scores": metrics.score(reply.text, c.reference)}


def _prompt_row(p: "InstructionPrompt", budget: int, reply: Any) -> dict[str, Any]:
    from deployment import metrics

    followed = p.followed(reply.text)
    return {"id": f"if-{p.key}", "prompt": p.prompt, "reply": reply.text, "max_tokens": budget,
            "finish_reason": reply.finish_reason, "words": metrics.reply_words(reply.text),
            "instructions": list(p.instruction_ids), "followed": followed, "score": sum(followed) / len(followed)}


@dataclass(frozen=True)
class _Ask:
    """One request of an eval set, and how its reply becomes a row."""

    id: str
    question: str
    history: list[dict[str, str]]
    max_tokens: int
    row: Callable[[Any], dict[str, Any]]

    def __call__(self, client: Any) -> dict[str, Any]:
        return self.row(client.chat(self.question, self.history, max_tokens=self.max_tokens, temperature=0.0))


def _asks(eval_set: EvalSet, max_tokens: int | None) -> list[_Ask]:
    from functools import partial

    from deployment import instructions, metrics

    asks = []
    for c in eval_set.conversations:
        budget = max_tokens or metrics.max_tokens_for(c.reference)
        asks.append(_Ask(c.id, c.question, c.history, budget, partial(_conversation_row, c, budget)))
    for p in eval_set.prompts:
        budget = max_tokens or instructions.MAX_TOKENS
        asks.append(_Ask(f"if-{p.key}", p.prompt, [], budget, partial(_prompt_row, p, budget)))
    return asks


def score_deployment(
    client: Any,
    eval_set: EvalSet,
    *,
    label: str,
    model: str,
    concurrency: int = CONCURRENCY,
    max_tokens: int | None = None,
    environment: str = "",
) -> Scores:
    """Ask every conversation and instruction prompt (`concurrency` in flight), score each reply; progress on stderr.

    `max_tokens` caps every reply alike (default: per conversation from its reference, metrics.max_tokens_for;
    instructions.MAX_TOKENS per prompt).
    """
    from deployment.metrics import metric_version
    from flows.chat.phi_client import EndpointError

    asks = _asks(eval_set, max_tokens)
    total = len(asks)
    say(f"    evaluating {label}: {len(eval_set.conversations)} conversation(s) from {eval_set.path}"
        + (f" and {len(eval_set.prompts)} instruction prompt(s)" if eval_set.prompts else "")
        + f" ({concurrency} in flight)")
    started = time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    next_note = started + 5.0
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(ask, client) for ask in asks]
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
    return Scores(label, model, eval_set.sha256, metric_version(), [rows[c.id] for c in eval_set.conversations],
                  time.perf_counter() - started, str(eval_set.path), [rows[f"if-{p.key}"] for p in eval_set.prompts],
                  environment)


def _ci(low: float, high: float) -> str:
    from deployment.metrics import points

    return f"[{points(low)}, {points(high)}]"


def table(columns: Sequence[Scores], comparisons: Mapping[str, Any] | None = None) -> str:
    """signal | deployment | mean | 95% CI | N | words | limit% (points: 0-100); with comparisons, a `new - live`
    row per signal (`comparisons`: {signal: object with .difference, an Interval of mean(d)})."""
    from deployment.metrics import points, signed_points

    width = max([len("deployment"), len("new - live")] + [len(s.label) for s in columns])
    lines = [f"{'signal':<13} {'deployment':<{width}} {'mean':>6}  {'95% CI':<16} {'N':>4} {'words':>6} {'limit%':>6}"]
    found = {name: s for s in columns for name in s.signals()}
    for name in (n for n in SIGNALS if n in found):
        for scores in columns:
            if name not in scores.signals():
                continue
            stat = scores.stats()[name]
            lines.append(f"{name:<13} {scores.label:<{width}} {points(stat['mean']):>6}  "
                         f"{_ci(stat['ci_low'], stat['ci_high']):<16} {stat['n']:>4} {stat['mean_words']:>6.1f} "
                         f"{points(stat['length_share']):>6}")
        comparison = (comparisons or {}).get(name)
        if comparison is not None:
            d = comparison.difference
            lines.append(f"{name:<13} {'new - live':<{width}} {signed_points(d.mean):>6}  "
                         f"{'[' + signed_points(d.low) + ', ' + signed_points(d.high) + ']':<16} {d.n:>4}")
    for scores in columns:
        if scores.instruction_rows:
            stat = scores.stats()["instructions"]
            lines.append(f"IFEval strict accuracy, {scores.label}: prompt-level {points(stat['prompt_level'])}, "
                         f"instruction-level {points(stat['instruction_level'])}")
    return "\n".join(lines)


def write_json(scores: Scores, name: str) -> Path:
    """runs/eval/<UTC time>-<name>.json, written whole (never a partial file)."""

    from common import runs

    from common.files import write_atomic

    safe = "-".join("".join(ch if ch.isalnum() or ch in "_." else " " for ch in name).split())
    path = runs.eval_dir() / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{safe}.json"
    write_atomic(path, json.dumps(scores.to_json(), indent=1) + "\n")
    return path
