"""Conversations longer than `max_length`: counted, then truncated (TRL cuts them) or skipped.

TRL truncates every tokenized conversation to `max_length` (and BFD packing does the same)
without a word. Here each split is measured first, with the chat template TRL renders, and the
log and summary.json say how many conversations were too long and how many tokens that drops.
`--overlong skip` leaves those conversations out instead (then no token is cut).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

LENGTH = "_tokens"


@dataclass(frozen=True)
class Overlong:
    rows: int
    over_max_length: int
    """Conversations with more tokens than max_length."""
    tokens_over: int
    """Tokens past max_length in those conversations: cut with truncate, never seen with skip."""
    policy: str
    """truncate | skip."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self, split: str, max_length: int) -> str:
        if not self.over_max_length:
            return f"{split}: all {self.rows} conversations fit in {max_length} tokens"
        action = "truncated, dropping" if self.policy == "truncate" else "skipped, with"
        return (f"{split}: {self.over_max_length} of {self.rows} conversations exceed {max_length} tokens: "
                f"{action} {self.tokens_over} tokens past the limit (--overlong {self.policy})")


def _lengths(batch: dict[str, list[Any]], tokenizer: Any) -> dict[str, list[int]]:
    ids = tokenizer.apply_chat_template(batch["messages"], tokenize=True, return_dict=True)["input_ids"]
    return {LENGTH: [len(row) for row in ids]}


def apply(dataset: Any, tokenizer: Any, max_length: int, policy: str) -> tuple[Any, Overlong]:
    """The dataset (without its long conversations if `policy` is skip) and what was over the limit."""
    measured = dataset.map(_lengths, batched=True, fn_kwargs={"tokenizer": tokenizer}, desc="Measuring conversations")
    lengths = measured[LENGTH]
    over = [n - max_length for n in lengths if n > max_length]
    report = Overlong(rows=len(lengths), over_max_length=len(over), tokens_over=sum(over), policy=policy)
    if policy == "skip" and over:
        measured = measured.filter(lambda n: n <= max_length, input_columns=[LENGTH])
    return measured.remove_columns([LENGTH]), report
