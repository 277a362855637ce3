"""The gate's test, simulated: false refusals of equal models, power against a 5-point drop, the stated formulas.

Vectorised with NumPy (seeded), so thousands of simulated gates take well under a second and run in
`make check`. Each test runs `deployment.stats.refuses`, the very rule the gate applies, on
simulated per-conversation differences d = new - live at the gate's defaults (N, delta, alpha / 2 per
signal), and prints the rates it measured (`pytest -s` shows them).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import eval_sets
from deployment import gate, stats
from deployment.metrics import DEFAULT_MARGIN, f1_cut
from deployment.scoring import DEFAULT_LIMIT

N = DEFAULT_LIMIT
DELTA = DEFAULT_MARGIN / 100
ALPHA = gate.ALPHA / 2  # two signals, Bonferroni
RUNS = 4000
MC = 3 * math.sqrt(ALPHA * (1 - ALPHA) / RUNS)
"""Three Monte Carlo standard errors of a rate near alpha."""


def refusal_rate(d: np.ndarray) -> float:
    """The share of simulated gates (rows of d) that refuse."""
    return float(np.mean(stats.refuses(d.mean(axis=1), d.std(axis=1, ddof=1), d.shape[1], DELTA, ALPHA)))


@pytest.fixture(scope="module")
def drops() -> np.ndarray:
    """Per conversation of the fixture: what a lost fact costs in f1_cut (right reply minus a same-style wrong one)."""
    cases = eval_sets.cases()
    concise = [f1_cut(c.answer, c.reference) - f1_cut(c.distractor_answer, c.reference) for c in cases]
    verbose = [f1_cut(c.reference, c.reference) - f1_cut(c.distractor, c.reference) for c in cases]
    return np.array(concise + verbose)


def five_point_drop(drops: np.ndarray, rng: np.random.Generator, runs: int = RUNS) -> np.ndarray:
    """A model 5 points worse: each conversation loses its fact with probability p, costing a measured drop."""
    p = 0.05 / drops.mean()
    return -((rng.random((runs, N)) < p) * rng.choice(drops, (runs, N)))


def test_the_planning_spread_is_the_one_measured_on_the_fixture(drops):
    p = 0.05 / drops.mean()
    spread = math.sqrt(p * float(np.mean(drops ** 2)) - 0.05 ** 2)
    detectable = stats.detectable_drop(spread, N, DELTA, ALPHA)
    print(f"\nfixture: a lost fact costs {100 * drops.mean():.1f} points on average; a 5-point drop (p={p:.3f}) "
          f"has a per-conversation spread of d of {spread:.3f}; at N={N}, delta={DELTA}, alpha={ALPHA}: smallest "
          f"drop detected with 80% power {100 * detectable:.1f} points; 80% power at 5 points holds up to spread "
          f"{(0.05 - DELTA) * math.sqrt(N) / (stats.t_quantile(1 - ALPHA, N - 1) + stats.t_quantile(0.8, N - 1)):.3f}")
    assert abs(spread - gate.PLANNING_SD["correctness"]) < 0.01
    assert detectable < 0.05, "N and delta must let a 5-point drop be refused at least 80% of the time"
    assert stats.needed_n(spread, 0.05, DELTA, ALPHA) <= N


def test_equal_models_are_refused_at_most_at_alpha_even_when_only_a_few_replies_differ(drops):
    rng = np.random.default_rng(7)
    rates = {"every reply differs (normal, sd 0.14)": refusal_rate(rng.normal(0.0, 0.14, (RUNS, N)))}
    churn = (rng.random((RUNS, N)) < 0.3) * rng.choice([-1.0, 1.0], (RUNS, N)) * rng.choice(drops, (RUNS, N))
    rates["30% of replies differ by a measured drop, either way"] = refusal_rate(churn)
    for k in (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30):
        for size, x in (("measured", rng.choice(drops, (RUNS, k))), ("whole-score", np.ones((RUNS, k)))):
            d = np.zeros((RUNS, N))
            d[:, :k] = rng.choice([-1.0, 1.0], (RUNS, k)) * x  # which k differ does not matter to the test
            rates[f"{k} replies differ ({size} flips)"] = refusal_rate(d)
    print("\nequal models, refusal rate at the default N (alpha per signal {:.4f}):".format(ALPHA))
    for case, rate in rates.items():
        print(f"  {rate:.4f}  {case}")
    assert max(rates.values()) <= ALPHA


def test_at_the_margin_the_test_refuses_at_its_stated_level():
    """mean(d) = -delta exactly (the edge of H0): a t-test at this N refuses at alpha, not more."""
    rng = np.random.default_rng(11)
    rate = refusal_rate(rng.normal(-DELTA, 0.14, (RUNS, N)))
    print(f"\nmean(d) = -delta, sd 0.14: refused {rate:.4f} (stated {ALPHA:.4f}, Monte Carlo +-{MC:.4f})")
    assert ALPHA - MC <= rate <= ALPHA + MC


def test_a_five_point_drop_at_the_measured_spread_is_refused_at_least_80_percent_of_the_time(drops):
    rng = np.random.default_rng(13)
    lost = five_point_drop(drops, rng)
    churned = lost + (rng.random((RUNS, N)) < 0.05) * rng.choice([-1.0, 1.0], (RUNS, N)) * rng.choice(drops, (RUNS, N))
    rates = {"lost facts only": refusal_rate(lost), "lost facts + 5% of replies changed either way": refusal_rate(churned)}
    print("\n5-point drop, refusal rate at the default N:")
    for case, rate in rates.items():
        print(f"  {rate:.4f}  {case}")
    assert min(rates.values()) >= 0.80


def test_the_printed_detectable_drop_is_refused_80_percent_of_the_time():
    rng = np.random.default_rng(17)
    for sd in (0.1, 0.2, 0.3):
        drop = stats.detectable_drop(sd, N, DELTA, ALPHA)
        rate = refusal_rate(rng.normal(-drop, sd, (RUNS, N)))
        print(f"\nsd {sd}: detectable drop {100 * drop:.1f} points, refused {rate:.3f}")
        assert abs(rate - 0.80) < 0.03


def test_t_quantiles_match_the_published_tables():
    """Two-sided 95% and one-sided 99% critical values from any t table (and SciPy's t.ppf to 1e-9)."""
    table = {(0.975, 1): 12.7062, (0.975, 2): 4.3027, (0.975, 10): 2.2281, (0.975, 30): 2.0423, (0.99, 9): 2.8214,
             (0.99, 120): 2.3578, (0.9875, 199): 2.2585, (0.8, 199): 0.8434}
    for (p, df), expected in table.items():
        assert stats.t_quantile(p, df) == pytest.approx(expected, abs=5e-5)
        assert stats.t_quantile(1 - p, df) == pytest.approx(-expected, abs=5e-5)
    assert stats.t_cdf(0.0, 10) == pytest.approx(0.5)


def test_the_paired_test_states_its_numbers():
    live = [0.9, 0.8, 0.7, 1.0, 0.6] * 40
    same = stats.paired_test(live, live, delta=DELTA, alpha=ALPHA, planning_sd=0.14)
    assert not same.worse and same.sd == 0 and same.planning_sd and same.detectable == pytest.approx(
        stats.detectable_drop(0.14, 200, DELTA, ALPHA))
    worse = stats.paired_test([v - 0.05 for v in live], live, delta=DELTA, alpha=ALPHA, planning_sd=0.14)
    assert worse.worse and worse.upper == pytest.approx(-0.05)
    within = stats.paired_test([v - 0.005 for v in live], live, delta=DELTA, alpha=ALPHA, planning_sd=0.14)
    assert not within.worse, "a uniform drop inside the margin is not refused"
    with pytest.raises(ValueError):
        stats.paired_test([0.1], [0.1, 0.2], delta=DELTA, alpha=ALPHA, planning_sd=0.14)
