"""Reference-based scores for one reply, their confidence intervals, and the paired comparison.

The scores come from `azure-ai-evaluation`, Microsoft's successor to promptflow-evals: its
non-LLM evaluators need no judge model and run offline. Token F1 (the SQuAD normalisation:
lower case, no punctuation or articles) is the gate's metric; ROUGE-L F-measure is reported
beside it. Intervals and the paired comparison are percentile bootstraps with a fixed seed,
so the same scores always give the same table and the same verdict.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

METRICS = ("f1", "rougeL")
"""Metric keys, in table order; the first one is the gate's."""
GATE_METRIC = METRICS[0]
DEFAULT_MARGIN = 0.02
"""How much lower (absolute token F1) a new deployment may score than the live one: see docs/DEPLOY.md."""
LEVEL = 0.95
RESAMPLES = 2000
SEED = 0
SCORING_REVISION = "1"
"""Bump when the way replies are produced or scored changes (max_tokens, prompt, normalisation)."""


def metric_version() -> str:
    """What a stored score was computed with: our scoring revision and the evaluator library's version."""
    from importlib.metadata import version

    return f"{SCORING_REVISION}/azure-ai-evaluation-{version('azure-ai-evaluation')}/{'+'.join(METRICS)}"


@lru_cache(maxsize=1)
def _evaluators() -> dict[str, Callable[[str, str], float]]:
    """The library's evaluators, built once (the import takes seconds)."""
    import logging
    import os

    from common.pf_settings import OFFLINE_ENV

    for name, value in OFFLINE_ENV.items():  # no Azure Monitor settings/statsbeat calls from the import below
        os.environ.setdefault(name, value)
    from azure.ai.evaluation import F1ScoreEvaluator, RougeScoreEvaluator, RougeType

    logging.getLogger("azure.ai.evaluation").setLevel(logging.ERROR)
    f1, rouge = F1ScoreEvaluator(), RougeScoreEvaluator(rouge_type=RougeType.ROUGE_L)
    return {
        "f1": lambda reply, reference: float(f1(response=reply, ground_truth=reference)["f1_score"]),
        "rougeL": lambda reply, reference: float(
            rouge(response=reply, ground_truth=reference)["rouge_properties"]["rouge_f1_score"]),
    }


def score(reply: str, reference: str) -> dict[str, float]:
    """Every metric of one reply against its reference, each in [0, 1]; an empty reply scores 0."""
    if not reply.strip():
        return {name: 0.0 for name in METRICS}
    return {name: fn(reply, reference) for name, fn in _evaluators().items()}


@dataclass(frozen=True)
class Stat:
    """A mean with its bootstrap interval over N conversations."""

    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n": self.n, "level": LEVEL}


def _bootstrap_means(values: Sequence[float], resamples: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    n = len(values)
    return sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    position = q * (len(sorted_values) - 1)
    low, high = math.floor(position), math.ceil(position)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED) -> Stat:
    """Mean and 95% percentile-bootstrap interval (degenerate for N < 2)."""
    if not values:
        return Stat(float("nan"), float("nan"), float("nan"), 0)
    mean = sum(values) / len(values)
    if len(values) < 2:
        return Stat(mean, mean, mean, len(values))
    means = _bootstrap_means(values, resamples, seed)
    tail = (1 - LEVEL) / 2
    return Stat(mean, _percentile(means, tail), _percentile(means, 1 - tail), len(values))


@dataclass(frozen=True)
class Comparison:
    """new - live on the same conversations, for the gate metric."""

    difference: Stat
    margin: float

    @property
    def worse(self) -> bool:
        """Worse beyond the noise: the whole interval is below zero AND the mean drop exceeds the margin."""
        return self.difference.high < 0 and self.difference.mean < -self.margin


def compare(new: Sequence[float], live: Sequence[float], margin: float = DEFAULT_MARGIN) -> Comparison:
    """Paired bootstrap of the per-conversation differences (the same conversations, in the same order)."""
    if len(new) != len(live):
        raise ValueError(f"paired scores need the same conversations: {len(new)} new vs {len(live)} live")
    return Comparison(summarize([a - b for a, b in zip(new, live)]), margin)
