"""The correctness score of one reply against its reference: token F1 against the reference cut to the reply's length.

Why not plain token F1 against the whole reference: an ultrachat reference runs to hundreds of
words, so a concise right answer has tiny recall, and a long reply in the reference's style (same
function words, same stock phrases) collects overlap whether or not its facts are right. Here:

- Words are SQuAD-normalised (lower case, punctuation and articles removed) and only *content*
  words count (STOPWORDS, the function words every fluent reply shares with every reference).
- The reference is cut to the reply's length in content words, L = clamp(len(reply), lead, len(reference)),
  where `lead` is the length of the reference's first sentence (so a one-word reply is still
  measured against a whole answer sentence), and the score is token F1 between the reply and that cut.
- For a reply between the lead and the reference in length, P = R = F1 = (content words shared with
  the first L words of the reference) / L: each extra word of the reply makes the reference it is
  held to one word longer, so length alone buys nothing; longer than the reference, precision
  falls; shorter than the lead, recall falls. docs/DEPLOY.md has the argument and the numbers.

Also here: how many tokens a reply may take (`max_tokens_for`), from the reference's length.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Sequence

GATE_METRIC = "f1_cut"
METRICS = (GATE_METRIC,)
"""Per-conversation scores kept in the JSON, in table order; the first is the gate's correctness signal."""
DEFAULT_MARGIN = 1.0
"""delta of the gate's test, in points (1 point = 0.01 of a 0-1 score): see deployment/gate.py and docs/DEPLOY.md."""
SCORING_REVISION = "2"
"""Bump when the way replies are produced or scored changes (max_tokens, prompt, normalisation, checkers)."""

MAX_TOKENS_FLOOR = 64
MAX_TOKENS_CAP = 512
TOKENS_PER_WORD = 1.5
"""Phi-3's tokenizer averages about 1.3 tokens per English word; 1.5 leaves room."""
LENGTH_ALLOWANCE = 2.0
"""A reply may run to twice the reference's length before it is cut (`length`)."""

STOPWORDS = frozenset("""
a an the and or but nor if then else than so as of to in on at by for with from into onto over under
about above below after before between through during since until while upon within without against
among across along around behind beyond toward towards via per is are was were be been being am do
does did doing done has have had having it its itself this that these those there here their theirs
they them themselves he him his himself she her hers herself we us our ours ourselves you your yours
yourself yourselves i me my mine myself who whom whose which what when where why how all any both
each few more most other some such no not only own same too very can could would should will shall
may might must just also still even yet ever one ones s t
""".split())

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def normalized_words(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, whitespace-split."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split()


def content_words(text: str) -> list[str]:
    return [word for word in normalized_words(text) if word not in STOPWORDS]


def token_f1(reply: Sequence[str], reference: Sequence[str]) -> float:
    """SQuAD token F1 of two word lists (each shared word counted as often as both contain it)."""
    shared = sum((Counter(reply) & Counter(reference)).values())
    if not shared:
        return 0.0
    precision, recall = shared / len(reply), shared / len(reference)
    return 2 * precision * recall / (precision + recall)


def lead(reference: str) -> str:
    """The reference's first sentence."""
    return _SENTENCE_END.split(reference.strip(), maxsplit=1)[0]


def f1_cut(reply: str, reference: str) -> float:
    """Token F1 of the reply's content words against the reference's first L, L = clamp(len(reply), lead, len(reference))."""
    said, expected = content_words(reply), content_words(reference)
    if not said or not expected:
        return 0.0
    length = min(max(len(said), len(content_words(lead(reference)))), len(expected))
    return token_f1(said, expected[:length])


def score(reply: str, reference: str) -> dict[str, float]:
    """Every per-conversation metric of one reply, each in [0, 1]; an empty reply scores 0."""
    return {GATE_METRIC: f1_cut(reply, reference)}


def reply_words(text: str) -> int:
    return len(text.split())


def max_tokens_for(reference: str) -> int:
    """Room for a reply up to LENGTH_ALLOWANCE times the reference, between MAX_TOKENS_FLOOR and MAX_TOKENS_CAP."""
    wanted = math.ceil(LENGTH_ALLOWANCE * TOKENS_PER_WORD * reply_words(reference))
    return max(MAX_TOKENS_FLOOR, min(MAX_TOKENS_CAP, wanted))


def metric_version() -> str:
    """What a stored score was computed with: the scoring revision, the metrics and the checkers' revision."""
    from deployment.instructions import CHECKERS_REVISION

    return f"{SCORING_REVISION}/{'+'.join(METRICS)}/ifeval-style-{CHECKERS_REVISION}"


def points(value: float) -> str:
    """A 0-1 score as points (0.873 -> '87.3'), the unit of tables, margins and drops."""
    return f"{100 * value:.1f}"


def signed_points(value: float) -> str:
    return f"{100 * value:+.1f}"

