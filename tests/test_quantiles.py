"""Tests of integer conformal ranks, the exact weighted rule, client weights and FedCP-QQ."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest

from flwr_gcfcp.core.quantiles import (
    client_lambdas,
    conformal_rank,
    fedcp_qq_client_ranks,
    fedcp_qq_coverage,
    fedcp_qq_ranks,
    fedcp_qq_threshold,
    integer_weights,
    split_conformal_threshold,
    weighted_conformal_threshold,
)
from flwr_gcfcp.core.validation import InsufficientDataWarning

ALPHAS = [0.01, 0.02, 0.05, 0.07, 0.1, 0.123, 0.15, 0.2, 0.25, 0.3, 0.333, 0.45, 0.5, 0.7, 0.9]


# ------------------------------------------------------------------------------------------------ ranks
def brute_rank(n: int, alpha: float) -> int:
    target = 1 - Fraction(repr(alpha))
    k = 0
    while Fraction(k, n + 1) < target:
        k += 1
    return k


def test_conformal_rank_matches_brute_force_on_many_cells():
    cells = [(n, a) for n in range(0, 250) for a in ALPHAS]
    assert len(cells) >= 1000
    naive_wrong = 0
    for n, a in cells:
        k = conformal_rank(n, a)
        assert k == brute_rank(n, a), (n, a)
        naive_wrong += math.ceil((n + 1) * (1 - a)) != k
    assert naive_wrong > 0  # float ceil((n+1)(1-α)) is off for some cells (e.g. n=99, α=0.45); ours is not


def test_split_threshold_is_kth_order_statistic():
    rng = np.random.default_rng(0)
    higher_off = 0
    for n in range(1, 90):
        s = rng.standard_normal(n)
        for a in ALPHAS:
            k = brute_rank(n, a)
            if k > n:
                with pytest.warns(InsufficientDataWarning, match=rf"n={n}.*alpha={a}.*\(1 - alpha\)/alpha"):
                    assert split_conformal_threshold(s, a) == math.inf
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                thr = split_conformal_threshold(s, a)
            assert thr == np.sort(s)[k - 1]
            # exactly k of n scores are <= the threshold (no ties): coverage (k)/(n+1) >= 1 - α
            assert np.sum(s <= thr) == k
            higher_off += np.quantile(s, k / n, method="higher") != thr
    assert higher_off > 0  # the np.quantile pitfall exists; we do not fall into it


def test_split_threshold_with_ties_and_minimum_n():
    assert split_conformal_threshold([1.0, 1.0, 1.0, 2.0] * 5, 0.25) == 2.0  # k = ceil(21·0.75) = 16
    with pytest.warns(InsufficientDataWarning, match="9"):
        split_conformal_threshold(np.arange(8.0), 0.1)  # needs 9 points
    assert split_conformal_threshold(np.arange(9.0), 0.1) == 8.0


# ---------------------------------------------------------------------------------------- weighted rule
def brute_weighted(values, weights, alpha, total, exact=True):
    a = Fraction(repr(alpha))
    best = math.inf
    for s in values:
        mass = sum(int(w) if exact else float(w) for v, w in zip(values, weights) if v <= s)
        ok = Fraction(mass) >= (1 - a) * Fraction(total) if exact else mass >= float(1 - a) * float(total)
        if ok and s < best:
            best = s
    return float(best)


def test_weighted_rule_integer_weights_brute_force():
    rng = np.random.default_rng(1)
    for trial in range(400):
        n = int(rng.integers(1, 40))
        values = rng.integers(0, 8, size=n).astype(float) if trial % 2 else rng.standard_normal(n)
        weights = rng.integers(1, 20, size=n)
        total = int(weights.sum()) + int(rng.integers(0, 30))
        alpha = float(rng.choice(ALPHAS))
        expected = brute_weighted(values, weights, alpha, total)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsufficientDataWarning)
            got = weighted_conformal_threshold(values, weights, alpha, total)
            obj = np.empty(n, dtype=object)
            obj[:] = [int(w) * 10**25 for w in weights]
            got_big = weighted_conformal_threshold(values, obj, alpha, total * 10**25)
            got_frac = weighted_conformal_threshold(values, weights, Fraction(repr(alpha)), Fraction(total))
        assert got == expected == got_big == got_frac, (trial, got, expected, got_big)


def test_weighted_rule_exact_at_boundary():
    # Σ w 1{v <= s} hits (1 - α)·T exactly: 9 of total 10 at α = 0.1 (float 0.9·10 = 9.000000000000002 would miss)
    values = np.arange(10.0)
    weights = np.ones(10, dtype=np.int64)
    assert weighted_conformal_threshold(values, weights, 0.1, 10) == 8.0
    assert weighted_conformal_threshold(values, weights, 0.1, 11) == 9.0
    with pytest.warns(InsufficientDataWarning):
        assert weighted_conformal_threshold(values, weights, 0.05, 11) == math.inf
    with pytest.warns(InsufficientDataWarning):
        assert weighted_conformal_threshold([], [], 0.1, 1) == math.inf


def test_weighted_rule_float_weights_brute_force():
    rng = np.random.default_rng(2)
    for trial in range(300):
        n = int(rng.integers(1, 40))
        values = rng.integers(0, 6, size=n).astype(float) if trial % 2 else rng.random(n)
        weights = rng.exponential(size=n) + 0.01
        total = float(weights.sum()) * float(rng.uniform(1.0, 1.3))
        alpha = float(rng.choice(ALPHAS))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsufficientDataWarning)
            got = weighted_conformal_threshold(values, weights, alpha, total)
        assert got == brute_weighted(values, weights, alpha, total, exact=False), trial


def test_fcp_equivalence():
    """π_k = (n_k + 1)/(N + K) makes the weighted rule the ceil((1 - α)(N + K))-th smallest pooled score."""
    rng = np.random.default_rng(3)
    for trial in range(200):
        K = int(rng.integers(1, 6))
        ns = [int(x) for x in rng.integers(0, 60, size=K)]
        N = sum(ns)
        alpha = float(rng.choice(ALPHAS))
        pi = [Fraction(n + 1, N + K) for n in ns]
        lam = client_lambdas(ns, pi)
        D, num = integer_weights(lam)
        scores = [rng.standard_normal(n) for n in ns]
        pooled = np.concatenate(scores) if N else np.zeros(0)
        weights = np.concatenate([np.full(n, w, dtype=np.int64) for n, w in zip(ns, num)]) if N else np.zeros(0, int)
        total = sum(w * (n + 1) for n, w in zip(ns, num))  # data weight + test weight Σ λ_k, on the integer scale
        assert Fraction(total, D) == 1
        k = math.ceil((1 - Fraction(repr(alpha))) * (N + K))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsufficientDataWarning)
            got = weighted_conformal_threshold(pooled, weights, alpha, total)
        expected = np.sort(pooled)[k - 1] if k <= N else math.inf
        assert got == expected, (trial, ns, alpha)


# -------------------------------------------------------------------------------------- client weights
def test_client_lambdas_exact():
    lam = client_lambdas([9, 19, 4], [0.1, 0.2, 0.7])
    assert lam == [Fraction(1, 100), Fraction(1, 100), Fraction(7, 50)]
    assert client_lambdas([3, 1]) == [Fraction(1, 8), Fraction(1, 4)]
    lam = client_lambdas([5, 0, 2], [1, 1, 2])  # normalised exactly
    assert sum(Fraction(n + 1) * x for n, x in zip([5, 0, 2], lam)) == Fraction(1, 4) + Fraction(1, 4) + Fraction(1, 2)
    D, num = integer_weights(lam)
    assert all(Fraction(u, D) == x for u, x in zip(num, lam))
    assert D == math.lcm(*(x.denominator for x in lam))


def test_integer_weights_can_exceed_int64():
    lam = [Fraction(1, p) for p in (1000003, 1000033, 1000037, 1000039)]
    D, num = integer_weights(lam)
    assert D > 2**63 and all(isinstance(u, int) for u in num)


def test_bad_inputs_name_the_parameter():
    cases = [
        (lambda: conformal_rank(-1, 0.1), "n"),
        (lambda: conformal_rank(10, 1.5), "alpha"),
        (lambda: conformal_rank(2.5, 0.1), "n"),
        (lambda: split_conformal_threshold([1.0, np.nan], 0.1), "scores"),
        (lambda: split_conformal_threshold([1.0], 0.0), "alpha"),
        (lambda: weighted_conformal_threshold([1.0], [0], 0.1, 1), "weights"),
        (lambda: weighted_conformal_threshold([1.0], [1, 2], 0.1, 1), "weights"),
        (lambda: weighted_conformal_threshold([np.inf], [1], 0.1, 1), "values"),
        (lambda: weighted_conformal_threshold([1.0], [1], 0.1, -1), "total_weight"),
        (lambda: weighted_conformal_threshold([1.0], [1], 0.1, float("nan")), "total_weight"),
        (lambda: client_lambdas([3, -1]), r"n_per_client\[1\]"),
        (lambda: client_lambdas([3, 1.5]), r"n_per_client\[1\]"),
        (lambda: client_lambdas([3, 1], [0.5]), "pi"),
        (lambda: client_lambdas([3, 1], [0.5, -0.1]), r"pi\[1\]"),
        (lambda: client_lambdas([3, 1], [0, 0]), "pi"),
        (lambda: client_lambdas([]), "n_per_client"),
        (lambda: integer_weights([Fraction(-1, 2)]), r"lambdas\[0\]"),
        (lambda: fedcp_qq_ranks(0, 3, 0.1), "n_per_client"),
        (lambda: fedcp_qq_ranks(3, 0, 0.1), "n_clients"),
        (lambda: fedcp_qq_ranks(2, 4, 0.1), "needed"),  # 8 points < (1 - α)/α = 9
        (lambda: fedcp_qq_threshold([1.0, 2.0], 3), "k"),
        (lambda: fedcp_qq_threshold([1.0, np.nan], 1), "client_order_stats"),
        (lambda: fedcp_qq_coverage(4, 1, 5, 3), "k"),
    ]
    for i, (fn, needle) in enumerate(cases):
        with pytest.raises(ValueError, match=needle):
            fn()
            pytest.fail(f"case {i} did not raise")


# --------------------------------------------------------------------------------------------- FedCP-QQ
def test_qq_one_client_is_split_cp():
    for n in (9, 10, 50, 99, 1000):
        for a in (0.1, 0.05, 0.2):
            if n >= math.ceil((1 - Fraction(repr(a))) / Fraction(repr(a))):
                assert fedcp_qq_ranks(n, 1, a) == (1, conformal_rank(n, a))


def test_qq_float_matches_exact_rational():
    for n, m in [(2, 2), (4, 3), (5, 4), (7, 2), (3, 5)]:
        for k in range(1, m + 1):
            for ell in range(1, n + 1):
                exact = fedcp_qq_coverage(k, ell, n, m, exact=True)
                assert isinstance(exact, Fraction)
                assert abs(fedcp_qq_coverage(k, ell, n, m) - float(exact)) < 1e-12
    assert fedcp_qq_coverage(3, 4, 4, 3, exact=True) == Fraction(12, 13)  # max of everything: mn/(mn+1)


def test_qq_coverage_monte_carlo():
    """Brute-force simulation: exchangeable (i.i.d. uniform) scores, coverage of the k-th of the ℓ-th statistics."""
    rng = np.random.default_rng(11)
    trials = 100_000
    for n, m, k, ell in [(4, 3, 2, 3), (6, 4, 1, 5), (5, 5, 4, 2), (10, 2, 2, 8)]:
        cal = np.sort(rng.random((trials, m, n)), axis=2)[:, :, ell - 1]
        q = np.sort(cal, axis=1)[:, k - 1]
        covered = np.mean(rng.random(trials) <= q)
        expected = fedcp_qq_coverage(k, ell, n, m)
        se = math.sqrt(expected * (1 - expected) / trials)
        assert abs(covered - expected) < 4.5 * se, (n, m, k, ell, covered, expected)


def test_qq_ranks_minimal_cell_by_exhaustive_search():
    for n, m in [(4, 3), (5, 4), (10, 3), (20, 2), (6, 6)]:
        for a in (0.1, 0.2, 0.05, 0.3):
            target = 1 - Fraction(repr(a))
            cells = {
                (k, ell): fedcp_qq_coverage(k, ell, n, m, exact=True)
                for k in range(1, m + 1)
                for ell in range(1, n + 1)
            }
            feasible = {c: v for c, v in cells.items() if v >= target}
            if not feasible:
                with pytest.raises(ValueError, match="needed"):
                    fedcp_qq_ranks(n, m, a)
                continue
            k, ell = fedcp_qq_ranks(n, m, a)
            assert cells[(k, ell)] == min(feasible.values()), (n, m, a)


def test_qq_exact_equality_is_accepted():
    # M(m, n) = mn/(mn+1) = 0.9 exactly at m·n = 9, α = 0.1: the boundary cell must be accepted
    assert fedcp_qq_ranks(3, 3, 0.1) == (3, 3)


def test_qq_unequal_clients_and_threshold():
    k, ranks = fedcp_qq_client_ranks([50, 80, 50, 65], 0.1)
    k0, ell = fedcp_qq_ranks(50, 4, 0.1)
    assert k == k0 and ranks == [ell, ell + 30, ell, ell + 15]
    assert fedcp_qq_threshold([3.0, 1.0, np.inf, 2.0], 2) == 2.0
    assert fedcp_qq_threshold([3.0, 1.0, np.inf, 2.0], 4) == math.inf


def test_qq_chosen_cell_covers_in_simulation_unequal_sizes():
    rng = np.random.default_rng(5)
    sizes = [12, 20, 15]
    k, ranks = fedcp_qq_client_ranks(sizes, 0.2)
    trials = 40_000
    stats = np.stack([np.sort(rng.random((trials, n)), axis=1)[:, r - 1] for n, r in zip(sizes, ranks)], axis=1)
    q = np.sort(stats, axis=1)[:, k - 1]
    covered = np.mean(rng.random(trials) <= q)
    assert covered >= 0.8 - 4 * math.sqrt(0.16 / trials)
