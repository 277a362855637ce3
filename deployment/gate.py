"""The evaluation gate: the new deployment takes traffic only if it is not worse than the live one.

Both deployments answer the same eval set (deployment/scoring.py): held-out conversations
(correctness, `metrics.f1_cut`) and instruction prompts (instruction following, IFEval-style).
For each signal, d_i = new_i - live_i, and the stated test of deployment/stats.py decides:
H0 mean(d) >= -delta, rejected at one-sided ALPHA split over the signals (ALPHA / 2 each with
two). The outcome is one of:

- `worse`: some signal rejects H0 (refused; `python -m deployment.evaluate --compare` exits 3);
- `inconclusive`: no signal is worse, but the replies' lengths or `length` endings differ too much
  to judge (refused unless --force; exit 4);
- `not worse` (exit 0), or `baseline` on a first deploy (no live deployment: its scores are recorded).

The live deployment is re-scored only when its recorded scores (tags) were made on another eval
set, with another metric version, for another model or serving environment, or when its
per-conversation scores are not at hand: neither under runs/eval/scores/ nor (on Azure) in the
data asset its tags name, with the content hash they record. Models and environments match in
any of the forms Azure returns them (`azureml:NAME:VERSION`, ARM ids): `asset_key`.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from common.cli import say
from common.files import write_atomic
from deployment.metrics import DEFAULT_MARGIN, metric_version, points, signed_points
from deployment.scoring import SIGNALS, EvalSet, Scores, table, write_json
from deployment.stats import Interval, PairedTest, interval, paired_test

TAG_N = "eval-n"
TAG_FILE = "eval-file-sha256"
TAG_VERSION = "eval-metric-version"
TAG_MODEL = "eval-model"
TAG_ENVIRONMENT = "eval-environment"
TAG_SCORES = "eval-scores"
"""Where the per-conversation scores are kept (a data asset NAME:VERSION on Azure, a path locally)."""
TAG_SCORES_SHA = "eval-scores-sha256"
"""The SHA-256 of that file's content: stored scores are reused only when they hash to it."""

ALPHA = 0.025
"""One-sided level of the whole gate; each of the k signals compared is tested at ALPHA / k (Bonferroni)."""
PLANNING_SD = {"correctness": 0.14, "instructions": 0.25}
"""The per-item spread of d for a 5-point drop, measured on the fixtures (tests/deployment/test_gate_statistics.py):
used for the detectable drop when a run's d has no spread (identical replies)."""
LENGTH_RATIO_LIMIT = 3.0
"""Inconclusive when one side's mean reply is more than this many times longer than the other's."""
LENGTH_ENDINGS_LIMIT = 0.10
"""Inconclusive when the shares of replies cut off by max_tokens (`length`) differ by more than this."""
EXIT_CODES = {"baseline": 0, "not worse": 0, "worse": 3, "inconclusive": 4}
"""`python -m deployment.evaluate --compare` exits with these (docs/ARCHITECTURE.md section 4)."""

_ARM_ASSET = re.compile(r"/(?:models|environments)/([^/]+)/versions/([^/]+)$", flags=re.IGNORECASE)


def asset_key(reference: str) -> str:
    """A model or environment reference in one form: `NAME:VERSION` for `azureml:NAME:VERSION`, `NAME:VERSION` and
    the ARM id Azure returns (`/subscriptions/.../workspaces/W/models/NAME/versions/VERSION`); registry assets keep
    their registry (`registry/R/NAME:VERSION`); anything else (a local model folder) as given."""
    ref = reference.strip()
    match = _ARM_ASSET.search(ref)
    if match:
        registry = re.search(r"registries/([^/]+)/", ref)
        key = f"{match.group(1)}:{match.group(2)}"
        return f"registry/{registry.group(1)}/{key}" if registry else key
    return ref.removeprefix("azureml:")


def scores_text(scores: Scores) -> str:
    """The stored form of per-conversation scores (file and data asset alike): the text TAG_SCORES_SHA hashes."""
    return json.dumps(scores.to_json()) + "\n"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tags_for(scores: Scores, where: str = "") -> dict[str, str]:
    """The deployment's tags: each signal's mean, N, the eval set's hash, the metric version, model and environment."""
    stats = scores.stats()
    tags = {f"eval-{name}": f"{stats[name]['mean']:.4f}" for name in scores.signals()}
    tags.update({TAG_N: str(len(scores.rows)), TAG_FILE: scores.eval_sha256, TAG_VERSION: scores.metric_version,
                 TAG_MODEL: scores.model, TAG_SCORES_SHA: _sha256(scores_text(scores))})
    if scores.environment:
        tags[TAG_ENVIRONMENT] = scores.environment
    if where:
        tags[TAG_SCORES] = where
    return tags


def _cache_file(scope: str, model: str, eval_sha256: str, version: str, environment: str) -> Path:
    from common import runs

    key = [scope, asset_key(model), eval_sha256, version] + ([asset_key(environment)] if environment else [])
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]
    return runs.eval_scores_dir() / f"{digest}.json"


def remember(scope: str, scores: Scores, text: str | None = None) -> Path:
    """Keep per-conversation scores where a later deploy of the same endpoint finds them (`text`: as stored)."""
    path = _cache_file(scope, scores.model, scores.eval_sha256, scores.metric_version, scores.environment)
    write_atomic(path, scores_text(scores) if text is None else text)
    return path


def _same(stored: Scores, model: str, environment: str, eval_set: EvalSet) -> bool:
    return ((stored.eval_sha256, stored.metric_version, asset_key(stored.model), asset_key(stored.environment))
            == (eval_set.sha256, metric_version(), asset_key(model), asset_key(environment))
            and len(stored.rows) == len(eval_set.conversations)
            and len(stored.instruction_rows) == len(eval_set.prompts))


def _verified(text: str, tags: Mapping[str, str], model: str, eval_set: EvalSet,
              environment: str) -> tuple[Scores | None, str]:
    """Stored scores when their content hashes to the tag and they are for this eval set, metric version, model, environment."""
    expected = tags.get(TAG_SCORES_SHA)
    if not expected:
        return None, f"the live deployment's tags record no {TAG_SCORES_SHA} to check the stored scores against"
    if _sha256(text) != expected:
        return None, "the stored scores do not match the content hash in the live deployment's tags"
    try:
        scores = Scores.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError):
        return None, "the stored scores are not a scores file"
    if not _same(scores, model, environment, eval_set):
        return None, "the stored scores were made on another eval set, metric version, model or environment"
    return scores, ""


def _tags_match(tags: Mapping[str, str], model: str, eval_set: EvalSet, environment: str) -> str:
    """Why the tags' record does not fit this comparison ('' when it does)."""
    if TAG_FILE not in tags:
        return "no scores recorded"
    if tags.get(TAG_FILE) != eval_set.sha256:
        return "the eval set changed"
    if tags.get(TAG_VERSION) != metric_version():
        return "the metric version changed"
    if asset_key(tags.get(TAG_MODEL, "")) != asset_key(model):
        return f"the recorded model {tags.get(TAG_MODEL)} is not the live model {model}"
    if asset_key(tags.get(TAG_ENVIRONMENT, "")) != asset_key(environment):
        return "the live deployment's serving environment is not the one its scores were made with"
    return ""


def recorded(scope: str, tags: Mapping[str, str], model: str, eval_set: EvalSet,
             fetch: Callable[[str], str] | None = None, *, environment: str = "") -> tuple[Scores | None, str]:
    """The live deployment's stored scores when still valid, else None and why (one line).

    Valid: the tags name this eval set, metric version, model and environment, and the scores' content
    hashes to the tags' TAG_SCORES_SHA. Looked for under runs/eval/scores/ first, then through `fetch`
    (on Azure: the data asset the tags name), so a fresh machine or CI runner need not re-score.
    """
    why = _tags_match(tags, model, eval_set, environment)
    if why:
        return None, why
    why = "no per-conversation scores under runs/eval/scores/"
    try:
        cached = _cache_file(scope, model, eval_set.sha256, metric_version(), environment).read_text(encoding="utf-8")
        scores, why = _verified(cached, tags, model, eval_set, environment)
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
    scores, why = _verified(text, tags, model, eval_set, environment)
    if scores is not None:
        say(f"    live scores read from {ref} (content hash verified)")
        remember(scope, scores, text)
    return scores, (f"{ref}: {why}" if why else "")


def live_scores(scope: str, tags: Mapping[str, str], model: str, eval_set: EvalSet, label: str,
                rescore: Callable[[], Scores], fetch: Callable[[str], str] | None = None, *,
                environment: str = "") -> tuple[Scores, bool]:
    """The live deployment's scores and whether they were reused rather than measured now.

    `fetch` reads stored scores by the reference in TAG_SCORES (Azure: a data asset NAME:VERSION);
    `environment`: the live deployment's serving environment (scores from another image are not reused).
    """
    stored, why = recorded(scope, tags, model, eval_set, fetch, environment=environment)
    if stored is not None:
        stored.label = label
        say(f"    live scores reused: same eval set ({eval_set.sha256[:12]}), metric version and model {model}")
        return stored, True
    say(f"    re-scoring the live deployment ({why})")
    return rescore(), False


# -- the decision ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """One signal's paired comparison: the stated test and the two-sided 95% interval of mean(d) for the table."""

    signal: str
    test: PairedTest
    difference: Interval

    @property
    def worse(self) -> bool:
        return self.test.worse

    @property
    def margin(self) -> float:
        return self.test.delta

    def sentence(self) -> str:
        t = self.test
        return (f"{self.signal}: mean(d) {signed_points(t.mean)} points, one-sided {100 * (1 - t.alpha):.2f}% upper "
                f"bound {signed_points(t.upper)} vs -delta {signed_points(-t.delta)} -> "
                f"{'worse' if t.worse else 'not worse'}; smallest drop this run detects with 80% power: "
                f"{points(t.detectable)} points" + (" (at the planning spread: the replies did not differ)"
                                                    if t.planning_sd else f" (spread of d {points(t.sd)})"))


def compare(new: Scores, live: Scores, margin: float | None = None) -> dict[str, Comparison]:
    """Every signal both sides scored, each tested at ALPHA / (number of signals); `margin`: delta in points."""
    delta = (DEFAULT_MARGIN if margin is None else margin) / 100.0
    signals = [name for name in SIGNALS if name in new.signals() and name in live.signals()]
    out = {}
    for name in signals:
        a, b = new.signal(name), live.signal(name)
        test = paired_test(a, b, delta=delta, alpha=ALPHA / len(signals), planning_sd=PLANNING_SD[name])
        out[name] = Comparison(name, test, interval([x - y for x, y in zip(a, b)], bounds=(-1.0, 1.0)))
    return out


def inconclusive_reason(new: Scores, live: Scores) -> str:
    """Why the two sides' replies cannot be compared fairly ('' when they can): lengths or `length` endings."""
    reasons = []
    for name in (n for n in SIGNALS if n in new.signals() and n in live.signals()):
        a, b = new.stats()[name], live.stats()[name]
        if abs(a["length_share"] - b["length_share"]) > LENGTH_ENDINGS_LIMIT:
            reasons.append(f"{name}: {points(a['length_share'])}% of the new replies and {points(b['length_share'])}% "
                           f"of the live ones were cut off at max_tokens (more than {points(LENGTH_ENDINGS_LIMIT)} "
                           "points apart)")
        longer, shorter = max(a["mean_words"], b["mean_words"]), min(a["mean_words"], b["mean_words"])
        if longer > LENGTH_RATIO_LIMIT * max(shorter, 1.0):
            reasons.append(f"{name}: the new replies average {a['mean_words']:.0f} words and the live ones "
                           f"{b['mean_words']:.0f} (more than {LENGTH_RATIO_LIMIT:g} times apart)")
    return "; ".join(reasons)


@dataclass(frozen=True)
class Verdict:
    new: Scores
    live: Scores | None
    comparisons: dict[str, Comparison]
    forced: bool
    new_json: Path
    live_json: Path | None
    inconclusive_reason: str = ""

    @property
    def comparison(self) -> Comparison | None:
        """The correctness signal's comparison (None on a first deploy)."""
        return self.comparisons.get("correctness")

    @property
    def worse(self) -> bool:
        return any(c.worse for c in self.comparisons.values())

    @property
    def outcome(self) -> str:
        if self.live is None:
            return "baseline"
        if self.worse:
            return "worse"
        return "inconclusive" if self.inconclusive_reason else "not worse"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    @property
    def promote(self) -> bool:
        return self.forced or self.outcome in ("baseline", "not worse")

    @property
    def table(self) -> str:
        return table([s for s in (self.live, self.new) if s is not None], self.comparisons)

    def summary(self) -> str:
        """One sentence for the log and the error message."""
        if self.live is None:
            means = ", ".join(f"{name} {points(self.new.stats()[name]['mean'])}" for name in self.new.signals())
            return f"first deployment: {means} (N={len(self.new.rows)}) recorded as the baseline"
        worse = [c.signal for c in self.comparisons.values() if c.worse]
        if worse:
            return (f"the new deployment is worse than the live one beyond the margin on {' and '.join(worse)} "
                    f"(delta {points(self.comparisons[worse[0]].margin)} points, one-sided alpha {ALPHA} over "
                    f"{len(self.comparisons)} signal(s))")
        if self.inconclusive_reason:
            return f"the comparison is inconclusive: {self.inconclusive_reason}"
        return f"the new deployment is not worse than the live one ({', '.join(self.comparisons)})"

    def details(self) -> list[str]:
        """The test of each signal in one line, with the smallest drop it could detect."""
        return [c.sentence() for c in self.comparisons.values()]


def decide(new: Scores, live: Scores | None, *, force: bool, margin: float | None = None) -> Verdict:
    """Compare every signal (margin: delta in points, DEFAULT_MARGIN unless given), write both score files, print the verdict."""
    comparisons = compare(new, live, margin) if live is not None else {}
    verdict = Verdict(new, live, comparisons, force, write_json(new, new.label),
                      write_json(live, live.label) if live is not None else None,
                      inconclusive_reason(new, live) if live is not None else "")
    say(verdict.table)
    for line in verdict.details():
        say(f"    {line}")
    say(f"    {verdict.outcome}: {verdict.summary()}")
    say(f"    per-conversation scores: {verdict.new_json}" + (f", {verdict.live_json}" if verdict.live_json else ""))
    if force and verdict.outcome in ("worse", "inconclusive"):
        say(f"    --force: moving traffic anyway, although the comparison says {verdict.outcome}")
    return verdict
