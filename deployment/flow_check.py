"""Asking the chat flow from the command line, as the demo and the smoke path do after a deploy.

A held-out question to ask (read through the evaluation's one reader of the held-out split), and
the answer `pf flow test` printed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from common.cli import UserError

MAX_QUESTION_CHARS = 120
"""Short questions only: the demo prints them beside the answer."""


def held_out_questions(test_file: Path, count: int) -> list[tuple[str, str]]:
    """The first `count` short single-question chats of the held-out split, with their reference answers."""
    from deployment.scoring import load_eval_set

    single = [c for c in load_eval_set(test_file, limit=None).conversations
              if all(m["role"] == "system" for m in c.history) and len(c.question) <= MAX_QUESTION_CHARS]
    if not single:
        raise UserError(f"{test_file} holds no short single-turn chat to ask the model.")
    return [(c.question, c.reference) for c in single[:count]]


def parse_flow_answer(stdout: str) -> str:
    """The `answer` of the last JSON object `pf flow test` printed."""
    for match in reversed(list(re.finditer(r"^\{.*?^\}", stdout, flags=re.S | re.M))):
        try:
            return str(json.loads(match.group(0))["answer"])
        except (json.JSONDecodeError, KeyError):
            continue
    raise UserError(f"`pf flow test` printed no answer:\n{stdout[-1000:]}")
