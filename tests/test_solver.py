"""Exact per-atom solver against brute force and against independent LP formulations."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from flwr_gcfcp.core.reference import appd_test_dual, appd_threshold, cvxpy_dual_threshold
from flwr_gcfcp.core.simplex import check_certificate
from flwr_gcfcp.core.solver import AtomSolver, atom_thresholds, exact_integer_weights, left_null_space

CIFAR_GROUPS = [range(0, 4), range(2, 6), range(4, 8), range(6, 10)]
CIFAR_PATTERNS = np.array([[label in g for g in CIFAR_GROUPS] for label in range(10)])


def _kth(values, k):
    return math.inf if k > len(values) else float(np.sort(values)[k - 1])


def test_single_group_equals_integer_rank_split_cp():
    rng = np.random.default_rng(1)
    for n in range(1, 60):
        for alpha in (0.05, 0.1, 0.2, 0.25, 0.5):
            scores = rng.random(n)
            k = math.ceil((n + 1) * (1 - Fraction(str(alpha))))
            got = atom_thresholds(scores, np.ones(n, dtype=np.int64), np.zeros(n, dtype=int), [[True]], alpha, 1)[0]
            assert got == _kth(scores, k), (n, alpha)


def test_single_group_with_ties_at_exact_rank():
    # (1 - α)(n + 1) = 9 is an integer: the 9th smallest, not the 10th (float rounding would shift it)
    scores = np.array([0.1, 0.2, 0.2, 0.3, 0.4, 0.5, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99, 1.0, 1.0, 1.0, 1.0, 1.0])
    n = scores.size  # 19 -> (n + 1)(1 - 0.55) = 9
    got = atom_thresholds(scores, np.ones(n, dtype=np.int64), np.zeros(n, dtype=int), [[True]], 0.55, 1)[0]
    assert got == np.sort(scores)[8]


def test_fcp_weights_give_pooled_order_statistic():
    rng = np.random.default_rng(2)
    for _ in range(50):
        sizes = rng.integers(1, 40, size=rng.integers(2, 6))
        scores = [rng.random(s) for s in sizes]
        n_total, k_clients = int(sizes.sum()), len(sizes)
        # π_k = (n_k + 1)/(N + K) -> λ_k = 1/(N + K): equal integer weights 1, test weight K
        pooled = np.concatenate(scores)
        got = atom_thresholds(pooled, np.ones(n_total, dtype=np.int64), np.zeros(n_total, dtype=int), [[True]], 0.1, k_clients)[0]
        # FCP's rule: the ceil((1 - α)(N + K))-th smallest pooled score
        assert got == _kth(pooled, math.ceil(Fraction(9, 10) * (n_total + k_clients)))
        lam = Fraction(1, n_total + k_clients)
        # weighted rule: min s with Σ λ 1{S <= s} >= 1 - α  (test weight enters through the level)
        srt = np.sort(pooled)
        want = next((float(s) for j, s in enumerate(srt, 1) if lam * j >= Fraction(9, 10) - 0), math.inf)
        # level (1 - α)(W + w_test) = (1 - α) since Σ λ_k (n_k + 1) = 1
        assert got == want


def test_disjoint_groups_are_mondrian():
    rng = np.random.default_rng(3)
    patterns = np.eye(3, dtype=bool)
    for _ in range(40):
        idx = rng.integers(0, 3, size=rng.integers(3, 80))
        scores = rng.random(idx.size)
        got = atom_thresholds(scores, np.ones(idx.size, dtype=np.int64), idx, patterns, 0.2, 1)
        for a in range(3):
            s = scores[idx == a]
            k = math.ceil((s.size + 1) * Fraction(4, 5))
            assert got[a] == _kth(s, k)


def test_unseen_pattern_outside_span_is_infinite_and_inside_span_is_finite():
    patterns = np.array([[1, 0], [0, 1], [1, 1]], dtype=bool)
    rng = np.random.default_rng(4)
    scores = rng.random(200)
    idx = rng.integers(0, 2, 200)  # data only in the two singleton atoms
    solver = AtomSolver(scores, np.ones(200, dtype=np.int64), idx, patterns, 0.1, 1)
    # (1, 1) = (1, 0) + (0, 1) lies in the span: the regression constrains it
    assert math.isfinite(solver.threshold([True, True]))
    solver2 = AtomSolver(scores, np.ones(200, dtype=np.int64), np.zeros(200, dtype=int), patterns, 0.1, 1)
    assert solver2.threshold([False, True]) == math.inf


def test_integer_conversion_of_float_weights_is_exact():
    w = np.array([0.1, 0.2, 1 / 3, 1e-5])
    ints, (t,) = exact_integer_weights(w, 0.7)
    ratios = [Fraction(int(i), int(ints[0])) for i in ints]
    assert ratios == [Fraction(x) / Fraction(0.1) for x in w]
    assert Fraction(int(t), int(ints[0])) == Fraction(0.7) / Fraction(0.1)


def test_left_null_space_of_paper_groups():
    basis = left_null_space(np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 1]]))
    assert len(basis) == 1 and basis[0] in ([1, -1, 1, -1, 1], [-1, 1, -1, 1, -1])


PATHMNIST_GROUPS = [range(0, 3), range(1, 4), range(2, 5), range(3, 6), range(4, 9)]
PATHMNIST_PATTERNS = np.array([[label in g for g in PATHMNIST_GROUPS] for label in range(9)])


def _random_family(rng):
    kind = rng.integers(0, 5)
    if kind == 0:  # paper's CIFAR-10 label groups
        return CIFAR_PATTERNS
    if kind == 4:  # paper's PathMNIST groups: a two-dimensional left null space, one relation between directions
        return PATHMNIST_PATTERNS
    if kind == 1:  # chain of overlapping label intervals
        d = int(rng.integers(2, 5))
        width = int(rng.integers(2, 4))
        labels = range(d + width - 1)
        return np.array([[g <= lab < g + width for g in range(d)] for lab in labels])
    if kind == 2:  # disjoint groups plus the whole space
        d = int(rng.integers(2, 4))
        return np.hstack([np.eye(d, dtype=bool), np.ones((d, 1), dtype=bool)])
    # arbitrary random subsets of labels (any number of relations between direction classes)
    n_labels, d = int(rng.integers(3, 7)), int(rng.integers(2, 4))
    pats = rng.random((n_labels, d)) < 0.5
    pats[~pats.any(axis=1), 0] = True
    return pats


def _random_problem(rng, ties: bool, integer_weights: bool):
    patterns = _random_family(rng)
    n = int(rng.integers(8, 45))
    idx = rng.integers(0, len(patterns), n)
    scores = np.round(rng.random(n), 1) if ties else rng.random(n)
    if integer_weights:
        weights = rng.integers(1, 6, n).astype(np.int64)
        test_weight = int(rng.integers(1, 4))
    else:
        weights = rng.uniform(0.2, 2.0, n)
        test_weight = float(rng.uniform(0.2, 2.0))
    alpha = float(rng.choice([0.1, 0.2, 0.3]))
    return patterns, idx, scores, weights, test_weight, alpha


def test_agrees_with_appd_dual_certificate_on_random_problems():
    """>= 200 random problems, every atom: the App. D dual LP certifies S* (admissible just below, not just above).

    By monotonicity of the test dual in S, this means the exact sets and the App. D sets agree for every test
    score outside (S* - eps, S* + eps); random test scores then give zero disagreeing sets.
    """
    rng = np.random.default_rng(2024)
    checked = disagreements = 0
    for trial in range(240):
        patterns, idx, scores, weights, tw, alpha = _random_problem(rng, ties=trial % 2 == 0, integer_weights=trial % 3 == 0)
        solver = AtomSolver(scores, weights, idx, patterns, alpha, tw)
        phi = patterns[idx]
        cap = (1 - alpha) * float(tw)
        test_scores = rng.random((20, 1)) * 2 - 0.5
        for a in range(len(patterns)):
            s_star = solver.threshold(patterns[a])
            dual = lambda s: appd_test_dual(scores, weights.astype(float), phi, patterns[a], float(tw), alpha, s)  # noqa: E731
            if math.isinf(s_star):
                assert s_star > 0
                assert dual(float(scores.max()) + 50.0) < cap * (1 - 1e-7), (trial, a)
            else:
                eps = 1e-6
                assert dual(s_star - eps) < cap * (1 - 1e-7), (trial, a, s_star)
                assert dual(s_star + eps) > cap * (1 - 1e-7), (trial, a, s_star)
                # sets on random test scores away from the eps-window
                ts = test_scores[np.abs(test_scores - s_star) > eps]
                for t in ts[:3]:
                    disagreements += (t <= s_star) != (dual(float(t)) < cap * (1 - 1e-7))
            checked += 1
    assert checked >= 1000 and disagreements == 0


def test_agrees_with_appd_bisection_at_fine_tolerance():
    rng = np.random.default_rng(7)
    for trial in range(25):
        patterns, idx, scores, weights, tw, alpha = _random_problem(rng, ties=trial % 2 == 0, integer_weights=trial % 2 == 1)
        got = atom_thresholds(scores, weights, idx, patterns, alpha, tw)
        for a in range(min(len(patterns), 3)):
            ref = appd_threshold(scores, weights.astype(float), patterns[idx], patterns[a], float(tw), alpha, tol=1e-10)
            if math.isinf(got[a]) or math.isinf(ref):
                assert got[a] == ref
            else:
                assert abs(got[a] - ref) < 1e-8, (trial, a, got[a], ref)


def test_agrees_with_cvxpy_formulation():
    pytest.importorskip("cvxpy")
    rng = np.random.default_rng(11)
    for trial in range(6):
        patterns = CIFAR_PATTERNS
        n = 40
        idx = rng.integers(0, 10, n)
        scores = rng.random(n)
        weights = rng.uniform(0.5, 1.5, n)
        got = atom_thresholds(scores, weights, idx, patterns, 0.1, 1.0)
        for a in (0, 5):
            ref = cvxpy_dual_threshold(scores, weights, patterns[idx], patterns[a], 1.0, 0.1, tol=1e-7)
            assert (math.isinf(got[a]) and math.isinf(ref)) or abs(got[a] - ref) < 1e-4, (trial, a, got[a], ref)  # interior-point accuracy


def test_pathmnist_groups_are_solved_exactly():
    rng = np.random.default_rng(12)
    idx = rng.integers(0, 9, 400)
    scores = rng.random(400)
    solver = AtomSolver(scores, np.ones(400, dtype=np.int64), idx, PATHMNIST_PATTERNS, 0.1, 1)
    got = [solver.threshold(p) for p in PATHMNIST_PATTERNS]
    for a in (0, 2, 4, 8):
        ref = appd_threshold(scores, np.ones(400), PATHMNIST_PATTERNS[idx], PATHMNIST_PATTERNS[a], 1.0, 0.1, tol=1e-10)
        assert abs(got[a] - ref) < 1e-8, (a, got[a], ref)


def test_family_with_two_relations_is_certified_exact():
    rng = np.random.default_rng(5)
    # seven atoms over three groups: the null-space rows span four directions with two relations (formerly an LP)
    patterns = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=bool)
    idx = rng.integers(0, 7, 200)
    scores = rng.random(200)
    solver = AtomSolver(scores, np.ones(200, dtype=np.int64), idx, patterns, 0.1, 1)
    for a in range(7):
        value = solver.threshold(patterns[a])
        cert = solver.certificates[patterns[a].tobytes()]
        check_certificate(cert, solver._engine, patterns[a])
        assert cert.kind == "optimal" and math.isfinite(value)
        ref = appd_threshold(scores, np.ones(200), patterns[idx], patterns[a], 1.0, 0.1, tol=1e-10)
        assert abs(value - ref) < 1e-8, (a, value, ref)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(values=[np.nan, 1.0]), "values"),
        (dict(weights=[1.0, -1.0]), "weights"),
        (dict(atom_index=[0, 3]), "atom_index"),
        (dict(alpha=1.5), "alpha"),
        (dict(test_weight=0.0), "test_weight"),
        (dict(weights=[1.0]), "mismatched"),
    ],
)
def test_bad_input(kwargs, match):
    args = dict(values=[0.1, 0.2], weights=[1.0, 1.0], atom_index=[0, 0], patterns=[[True]], alpha=0.1, test_weight=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        AtomSolver(**args)


def test_many_atoms_are_grouped_like_a_lexicographic_sort():
    """AtomSolver groups points by atom with a radix sort of 8- or 16-bit atom indices (5 and 300 atoms here):
    each atom's distinct scores and summed weights equal an independent lexsort-and-sum."""
    rng = np.random.default_rng(31)
    for m in (5, 300):
        n = max(2 * m, 2000)
        idx = rng.integers(0, m, n)
        scores = np.round(rng.random(n), 3)  # ties within atoms
        weights = rng.integers(1, 5, n)
        patterns = np.zeros((m, 17), dtype=bool)
        for a in range(m):  # distinct non-empty patterns
            patterns[a, [int(b) for b in np.flatnonzero([(a + 1) >> k & 1 for k in range(17)])]] = True
        engine = AtomSolver(scores, weights, idx, patterns, 0.1, 1)._engine
        order = np.lexsort((scores, idx))
        data_atoms = np.unique(idx)
        assert len(engine.values) == data_atoms.size
        for b, a in enumerate(data_atoms.tolist()):
            sel = order[idx[order] == a]
            vals, first = np.unique(scores[sel], return_index=True)
            sums = np.add.reduceat(weights[sel], first)
            assert np.array_equal(engine.values[b], vals)
            assert np.array_equal(np.diff(np.asarray(engine.levels[b], dtype=np.int64)), sums * 10)  # q = 10
            assert np.array_equal(engine.patterns[b], patterns[a])
