"""An optional pairwise judge: which of two replies answers better, asked in both orders. It informs, never decides.

`python -m deployment.evaluate --compare A B --judge URL --judge-model ID` asks a judge model
(any OpenAI-compatible endpoint; key from EVAL_JUDGE_KEY) about every conversation twice: once with
the live reply shown as Answer A and the new one as Answer B, once the other way round. Each
ordering scores the new reply 1 (judged better), 0.5 (a tie, or an unreadable verdict) or 0, and the
conversation scores the mean of its two orderings, so a judge that always prefers the first (or
second) position gives exactly 0.5: position bias cancels. The win rate of new against live is the
mean over conversations.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from common.cli import UserError, say

KEY_ENV = "EVAL_JUDGE_KEY"
MAX_TOKENS = 4
PROMPT = """You compare two answers to the same question from a user. Judge which answer is more correct \
and more helpful; do not prefer an answer for being longer.

Question:
{question}

Answer A:
{a}

Answer B:
{b}

Reply with one letter only: A if Answer A is better, B if Answer B is better, T if they are equally good."""


@dataclass(frozen=True)
class Judgement:
    """The pairwise win rate of new against live over N conversations (each judged in both orders)."""

    n: int
    win_rate: float
    new_first_wins: int
    """Orderings in which new was shown first and judged better: with `new_second_wins`, shows position bias."""
    new_second_wins: int
    unreadable: int

    def sentence(self) -> str:
        return (f"judge (informs, does not decide): new wins {100 * self.win_rate:.1f}% against live over {self.n} "
                f"conversation(s), each judged in both orders (new judged better {self.new_first_wins}x shown "
                f"first, {self.new_second_wins}x shown second; {self.unreadable} unreadable verdict(s) counted as ties)")

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "win_rate": self.win_rate, "new_first_wins": self.new_first_wins,
                "new_second_wins": self.new_second_wins, "unreadable": self.unreadable}


def _letter(text: str) -> str | None:
    head = text.strip().lstrip("*\"'([ ").upper()[:1]
    return head if head in ("A", "B", "T") else None


def pairwise(judge: Any, new: Any, live: Any, *, concurrency: int = 8) -> Judgement:
    """Judge new against live (scoring.Scores on the same eval set) on every conversation, in both orders."""
    from flows.chat.phi_client import EndpointError

    if [r["id"] for r in new.rows] != [r["id"] for r in live.rows]:
        raise ValueError("the judge compares replies to the same conversations")
    def ask(row_new: dict[str, Any], row_live: dict[str, Any], new_first: bool) -> str | None:
        a, b = (row_new, row_live) if new_first else (row_live, row_new)
        prompt = PROMPT.format(question=row_new.get("question", ""), a=a["reply"], b=b["reply"])
        return _letter(judge.chat(prompt, [], max_tokens=MAX_TOKENS, temperature=0.0).text)

    jobs = [(n, lv, first) for n, lv in zip(new.rows, live.rows) for first in (True, False)]
    say(f"    judging {len(new.rows)} conversation(s) in both orders ({len(jobs)} requests)")
    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            letters = list(pool.map(lambda job: ask(*job), jobs))
    except EndpointError as err:
        raise UserError(f"the judge: {err}") from None
    scores, first_wins, second_wins = [], 0, 0
    for (_, _, new_first), letter in zip(jobs, letters):
        won = letter == ("A" if new_first else "B")
        lost = letter == ("B" if new_first else "A")
        first_wins += won and new_first
        second_wins += won and not new_first
        scores.append(1.0 if won else 0.0 if lost else 0.5)
    per_conversation = [(scores[i] + scores[i + 1]) / 2 for i in range(0, len(scores), 2)]
    return Judgement(len(per_conversation), sum(per_conversation) / len(per_conversation), first_wins, second_wins,
                     sum(letter is None for letter in letters))
