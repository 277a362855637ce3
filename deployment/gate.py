"""The evaluation gate of deploy: the new deployment takes traffic only if it answers at least as well.

Both deployments answer the same held-out conversations (deployment/evaluate.py); the paired
comparison of their per-conversation token F1 (deployment/metrics.py) decides. A first deploy
has no live deployment: its scores become the baseline. The live deployment is re-scored only
when its recorded scores (tags) were made on another eval set, with another metric version, or
for another model, or when its per-conversation scores are not at hand (runs/eval/scores/).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from common.cli import say
from deployment.evaluate import EvalSet, Scores, table, write_json
from deployment.metrics import DEFAULT_MARGIN, GATE_METRIC, METRICS, Comparison, compare, metric_version

TAG_N = "eval-n"
TAG_FILE = "eval-file-sha256"
TAG_VERSION = "eval-metric-version"
TAG_MODEL = "eval-model"
TAG_SCORES = "eval-scores"
"""Where the per-conversation scores are kept (a data asset NAME:VERSION on Azure, a path locally)."""


def tags_for(scores: Scores, where: str = "") -> dict[str, str]:
    """The deployment's tags: the means, N, the eval set's hash, the metric version, the model."""
    stats = scores.stats()
    tags = {f"eval-{metric}": f"{stats[metric].mean:.4f}" for metric in METRICS}
    tags.update({TAG_N: str(len(scores.rows)), TAG_FILE: scores.eval_sha256, TAG_VERSION: scores.metric_version,
                 TAG_MODEL: scores.model})
    if where:
        tags[TAG_SCORES] = where
    return tags


def _cache_file(scope: str, model: str, eval_sha256: str, version: str) -> Path:
    from training import local_runs

    key = hashlib.sha256(json.dumps([scope, model, eval_sha256, version]).encode()).hexdigest()[:24]
    return local_runs.runs_dir() / "eval" / "scores" / f"{key}.json"


def remember(scope: str, scores: Scores) -> Path:
    """Keep per-conversation scores where a later deploy of the same endpoint finds them."""
    path = _cache_file(scope, scores.model, scores.eval_sha256, scores.metric_version)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(scores.to_json()) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def recorded(scope: str, tags: Mapping[str, str], model: str, eval_set: EvalSet) -> Scores | None:
    """The live deployment's stored scores when still valid (same eval set, metric version, model); else None."""
    version = metric_version()
    if (tags.get(TAG_FILE), tags.get(TAG_VERSION), tags.get(TAG_MODEL)) != (eval_set.sha256, version, model):
        return None
    path = _cache_file(scope, model, eval_set.sha256, version)
    try:
        return Scores.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError):
        return None


def live_scores(scope: str, tags: Mapping[str, str], model: str, eval_set: EvalSet, label: str,
                rescore: Callable[[], Scores]) -> tuple[Scores, bool]:
    """The live deployment's scores and whether they were reused rather than measured now."""
    stored = recorded(scope, tags, model, eval_set)
    if stored is not None:
        stored.label = label
        say(f"    live scores reused: same eval set ({eval_set.sha256[:12]}), metric version and model {model}")
        return stored, True
    why = "no scores recorded" if TAG_FILE not in tags else "eval set, metric version, model or stored scores changed"
    say(f"    re-scoring the live deployment ({why})")
    return rescore(), False


@dataclass(frozen=True)
class Verdict:
    new: Scores
    live: Scores | None
    comparison: Comparison | None
    forced: bool
    new_json: Path
    live_json: Path | None

    @property
    def worse(self) -> bool:
        return bool(self.comparison and self.comparison.worse)

    @property
    def promote(self) -> bool:
        return self.forced or not self.worse

    @property
    def table(self) -> str:
        return table([s for s in (self.live, self.new) if s is not None], self.comparison)

    def summary(self) -> str:
        """One sentence for the log and the error message."""
        n = self.new.stats()[GATE_METRIC]
        if self.comparison is None:
            return f"first deployment: {GATE_METRIC} {n.mean:.3f} (N={n.n}) recorded as the baseline"
        d = self.comparison.difference
        verdict = (f"worse than the live deployment beyond the noise ({GATE_METRIC} {d.mean:+.3f}, 95% CI "
                   f"[{d.low:+.3f}, {d.high:+.3f}], margin {self.comparison.margin:.3f})"
                   if self.worse else
                   f"not worse than the live deployment ({GATE_METRIC} {d.mean:+.3f}, 95% CI [{d.low:+.3f}, {d.high:+.3f}], "
                   f"margin {self.comparison.margin:.3f})")
        return f"the new deployment is {verdict}"


def decide(new: Scores, live: Scores | None, *, force: bool, margin: float | None = None) -> Verdict:
    """Compare on the gate metric (margin: DEFAULT_MARGIN unless given), write both score files, print the verdict."""
    margin = DEFAULT_MARGIN if margin is None else margin
    comparison = compare(new.values(GATE_METRIC), live.values(GATE_METRIC), margin) if live is not None else None
    verdict = Verdict(new, live, comparison, force, write_json(new, new.label),
                      write_json(live, live.label) if live is not None else None)
    say(verdict.table)
    say(f"    {verdict.summary()}")
    say(f"    per-conversation scores: {verdict.new_json}" + (f", {verdict.live_json}" if verdict.live_json else ""))
    if verdict.worse and force:
        say("    --force: moving traffic anyway, although the new deployment scores worse than the live one")
    return verdict
