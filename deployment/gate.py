"""The evaluation gate of deploy: the new deployment takes traffic only if it answers at least as well.

Both deployments answer the same held-out conversations (deployment/evaluate.py); the paired
comparison of their per-conversation token F1 (deployment/metrics.py) decides. A first deploy
has no live deployment: its scores become the baseline. The live deployment is re-scored only
when its recorded scores (tags) were made on another eval set, with another metric version, or
for another model, or when its per-conversation scores are not at hand: neither under
runs/eval/scores/ nor (on Azure) in the data asset its tags name, with the content hash they record.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from common.cli import say
from common.files import write_atomic
from deployment.scoring import EvalSet, Scores, table, write_json
from deployment.metrics import DEFAULT_MARGIN, GATE_METRIC, METRICS, Comparison, compare, metric_version

TAG_N = "eval-n"
TAG_FILE = "eval-file-sha256"
TAG_VERSION = "eval-metric-version"
TAG_MODEL = "eval-model"
TAG_SCORES = "eval-scores"
"""Where the per-conversation scores are kept (a data asset NAME:VERSION on Azure, a path locally)."""
TAG_SCORES_SHA = "eval-scores-sha256"
"""The SHA-256 of that file's content: stored scores are reused only when they hash to it."""


def scores_text(scores: Scores) -> str:
    """The stored form of per-conversation scores (file and data asset alike): the text TAG_SCORES_SHA hashes."""
    return json.dumps(scores.to_json()) + "\n"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tags_for(scores: Scores, where: str = "") -> dict[str, str]:
    """The deployment's tags: the means, N, the eval set's hash, the metric version, the model."""
    stats = scores.stats()
    tags = {f"eval-{metric}": f"{stats[metric].mean:.4f}" for metric in METRICS}
    tags.update({TAG_N: str(len(scores.rows)), TAG_FILE: scores.eval_sha256, TAG_VERSION: scores.metric_version,
                 TAG_MODEL: scores.model, TAG_SCORES_SHA: _sha256(scores_text(scores))})
    if where:
        tags[TAG_SCORES] = where
    return tags


def _cache_file(scope: str, model: str, eval_sha256: str, version: str) -> Path:
    from training import local_runs

    key = hashlib.sha256(json.dumps([scope, model, eval_sha256, version]).encode()).hexdigest()[:24]
    return local_runs.runs_dir() / "eval" / "scores" / f"{key}.json"


def remember(scope: str, scores: Scores, text: str | None = None) -> Path:
    """Keep per-conversation scores where a later deploy of the same endpoint finds them (`text`: as stored)."""
    path = _cache_file(scope, scores.model, scores.eval_sha256, scores.metric_version)
    write_atomic(path, scores_text(scores) if text is None else text)
    return path


def _verified(text: str, tags: Mapping[str, str], model: str, eval_set: EvalSet) -> tuple[Scores | None, str]:
    """Stored scores when their content hashes to the tag and they are for this eval set, metric version and model."""
    expected = tags.get(TAG_SCORES_SHA)
    if not expected:
        return None, f"the live deployment's tags record no {TAG_SCORES_SHA} to check the stored scores against"
    if _sha256(text) != expected:
        return None, "the stored scores do not match the content hash in the live deployment's tags"
    try:
        scores = Scores.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError):
        return None, "the stored scores are not a scores file"
    if (scores.eval_sha256, scores.metric_version, scores.model) != (eval_set.sha256, metric_version(), model) \
            or len(scores.rows) != len(eval_set.conversations):
        return None, "the stored scores were made on another eval set, metric version or model"
    return scores, ""


def recorded(scope: str, tags: Mapping[str, str], model: str, eval_set: EvalSet,
             fetch: Callable[[str], str] | None = None) -> tuple[Scores | None, str]:
    """The live deployment's stored scores when still valid, else None and why (one line).

    Valid: the tags name this eval set, metric version and model, and the scores' content hashes to
    the tags' TAG_SCORES_SHA. Looked for under runs/eval/scores/ first, then through `fetch`
    (on Azure: the data asset the tags name), so a fresh machine or CI runner need not re-score.
    """
    version = metric_version()
    if TAG_FILE not in tags:
        return None, "no scores recorded"
    if (tags.get(TAG_FILE), tags.get(TAG_VERSION), tags.get(TAG_MODEL)) != (eval_set.sha256, version, model):
        return None, "eval set, metric version or model changed"
    why = "no per-conversation scores under runs/eval/scores/"
    try:
        scores, why = _verified(_cache_file(scope, model, eval_set.sha256, version).read_text(encoding="utf-8"),
                                tags, model, eval_set)
        if scores is not None:
            return scores, ""
    except OSError:
        pass
    ref = tags.get(TAG_SCORES, "")
    if fetch is None or not ref:
        return None, why
    try:
        text = fetch(ref)
    except Exception as err:  # any failure to read the record only costs a re-score
        from common.cli import first_line

        return None, f"could not read the stored scores {ref}: {first_line(err)}"
    scores, why = _verified(text, tags, model, eval_set)
    if scores is not None:
        say(f"    live scores read from {ref} (content hash verified)")
        remember(scope, scores, text)
    return scores, (f"{ref}: {why}" if why else "")


def live_scores(scope: str, tags: Mapping[str, str], model: str, eval_set: EvalSet, label: str,
                rescore: Callable[[], Scores], fetch: Callable[[str], str] | None = None) -> tuple[Scores, bool]:
    """The live deployment's scores and whether they were reused rather than measured now.

    `fetch` reads stored scores by the reference in TAG_SCORES (Azure: a data asset NAME:VERSION).
    """
    stored, why = recorded(scope, tags, model, eval_set, fetch)
    if stored is not None:
        stored.label = label
        say(f"    live scores reused: same eval set ({eval_set.sha256[:12]}), metric version and model {model}")
        return stored, True
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
