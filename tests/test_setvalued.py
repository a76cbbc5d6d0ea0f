"""Tests of the set-valued frameworks: closed forms on a discrete p(x), federated equivalence, bad input.

The discrete distribution: three atoms x_a, x_b, x_c with counts 400 / 300 / 200 and labels in exact proportion to
p(x) (so the empirical distribution *is* the population). Optimal set-valued classifiers are then found by brute
force over all 16^3 deterministic classifiers and compared with each framework's closed form.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from flwr_gcfcp.methods.setvalued import (
    SetValuedClassifier,
    average_error_threshold,
    average_size_threshold,
    fbeta_threshold,
    fit_federated_in_process,
    fit_temperature,
    hybrid_size_threshold,
    nll_sums,
    pointwise_error_k,
    refine_temperature,
    top_k_mask,
)

CIFAR10 = Path("/work/shared/data/logits/cifar10_resnet56_test_logits.npz")

ATOMS = np.array(
    [
        [0.60, 0.25, 0.10, 0.05],
        [0.40, 0.35, 0.15, 0.10],
        [0.30, 0.28, 0.22, 0.20],
    ]
)
COUNTS = np.array([400, 300, 200])
MASS = COUNTS / COUNTS.sum()
SUBSETS = np.array(list(itertools.product([False, True], repeat=4)))  # 16 subsets of 4 labels


def _discrete_data() -> tuple[np.ndarray, np.ndarray]:
    probs, labels = [], []
    for row, n in zip(ATOMS, COUNTS):
        per_label = np.rint(row * n).astype(int)
        assert per_label.sum() == n
        probs.append(np.tile(row, (n, 1)))
        labels.append(np.repeat(np.arange(4), per_label))
    return np.vstack(probs), np.concatenate(labels)


def _atom_sets(mask: np.ndarray) -> np.ndarray:
    """The set of each atom (rows are identical within an atom)."""
    starts = np.r_[0, np.cumsum(COUNTS)[:-1]]
    sets = mask[starts]
    for s, n, row in zip(starts, COUNTS, sets):
        assert (mask[s : s + n] == row).all()
    return sets


def _err_size(sets: np.ndarray) -> tuple[float, float]:
    covered = (ATOMS * sets).sum(axis=1)
    return float(MASS @ (1 - covered)), float(MASS @ sets.sum(axis=1))


def _all_classifiers(max_size: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-atom (error, size) of every subset, and all combinations' average error and size."""
    cov = ATOMS @ SUBSETS.T.astype(float)  # (3, 16) covered mass
    size = SUBSETS.sum(axis=1)
    allowed = size <= max_size
    idx = np.array(list(itertools.product(*(np.flatnonzero(allowed),) * 3)))
    err = sum(MASS[a] * (1 - cov[a, idx[:, a]]) for a in range(3))
    avg = sum(MASS[a] * size[idx[:, a]] for a in range(3))
    pw_err = np.stack([1 - cov[a, idx[:, a]] for a in range(3)], axis=1)
    return err, avg, pw_err


def test_top_k_is_optimal_under_pointwise_size() -> None:
    p, _ = _discrete_data()
    for k in (1, 2, 3):
        err, _ = _err_size(_atom_sets(top_k_mask(p, k)))
        best, _, _ = _all_classifiers(max_size=k)
        assert err == pytest.approx(best.min(), abs=1e-12)
        assert (top_k_mask(p, k).sum(1) == k).all()


def test_pointwise_error_closed_form_and_temperature_one() -> None:
    p, y = _discrete_data()
    # k_ε per atom by hand: cumsums a (.6,.85,.95,1), b (.4,.75,.9,1), c (.3,.58,.8,1)
    # (several levels sit exactly on a cumulative sum: 0.85, 0.9, 0.95, 0.8, 0.75)
    expected = {0.2: [2, 3, 3], 0.1: [3, 3, 4], 0.05: [3, 4, 4], 0.15: [2, 3, 4], 0.25: [2, 2, 3]}
    for eps, ks in expected.items():
        got = _atom_sets(np.eye(4, dtype=bool)[pointwise_error_k(p, eps) - 1])
        assert got.argmax(axis=1).tolist() == [k - 1 for k in ks], eps
        # optimality: the smallest average size with every atom's error <= ε
        _, avg, pw = _all_classifiers()
        feasible = (pw <= eps + 1e-12).all(axis=1)
        assert float(MASS @ np.array(ks)) == pytest.approx(avg[feasible].min(), abs=1e-12)
    # labels drawn in exact proportion to p: the NLL is minimised at T = 1 (a grid point); the parabolic refinement
    # moves it by the parabola's error only (measured 2e-4 relative)
    assert fit_temperature(np.log(p), y) == pytest.approx(1.0, rel=1e-3)
    model = SetValuedClassifier("pointwise_error", epsilon=0.12).fit(p, y)
    assert model.temperature_ == pytest.approx(1.0, rel=1e-3)
    # ε = 0.12 is 0.02 away from every cumulative sum, so the sets do not depend on T within 1e-3 of 1 (ε = 0.2 sits
    # exactly on atom c's 0.8 and flips with any T != 1)
    assert model.predict(p).sum(1).tolist() == np.repeat([3, 3, 4], COUNTS).tolist()
    untuned = SetValuedClassifier("pointwise_error", epsilon=0.2, temperature_scaling=False)
    assert untuned.predict(p).sum(1).tolist() == np.repeat([2, 3, 3], COUNTS).tolist()


def test_refine_temperature_recovers_a_parabola_vertex_exactly() -> None:
    grid = 10.0 ** np.linspace(-1, 1, 41)
    x = np.log(grid)
    for x_star in (0.0123, -0.3, 0.77):
        sums = np.rint(1e12 * (x - x_star) ** 2).astype(np.int64)
        assert math.log(refine_temperature(grid, sums)) == pytest.approx(x_star, abs=1e-9)
        # the candidates may come in any order (the neighbours are taken in increasing T)
        perm = np.random.default_rng(0).permutation(grid.size)
        assert refine_temperature(grid[perm], sums[perm]) == refine_temperature(grid, sums)
    # an argmin at an end of the grid is kept; so are flat sums (first argmin)
    assert refine_temperature(grid, np.arange(grid.size)) == grid[0]
    assert refine_temperature(grid, -np.arange(grid.size)) == grid[-1]
    assert refine_temperature(grid, np.zeros(grid.size, dtype=np.int64)) == grid[0]
    with pytest.raises(ValueError, match="sums must hold 41"):
        refine_temperature(grid, np.zeros(3, dtype=np.int64))


def _continuous_temperature(z: np.ndarray, y: np.ndarray) -> float:
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    zy = z[np.arange(y.size), y]

    def nll(log_t: float) -> float:
        t = math.exp(log_t)
        return float(np.sum(logsumexp(z / t, axis=1) - zy / t))

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded", options={"xatol": 1e-9})
    return math.exp(res.x)


def test_refined_temperature_is_within_half_a_percent_of_the_continuous_optimum_on_cifar10() -> None:
    if not CIFAR10.is_file():
        pytest.skip(f"CIFAR-10 ResNet-56 outputs not found at {CIFAR10} (see /work/shared/data/README)")
    data = np.load(CIFAR10)
    z_all, y_all = data["logits"].astype(np.float64), data["labels"].astype(np.int64)
    worst_grid = 0.0
    for draw in range(3):  # the calibration halves of simulations.reproduce set-valued (seed 0)
        perm = np.random.default_rng([0, draw]).permutation(y_all.size)
        cal = perm[: y_all.size // 2]
        z, y = z_all[cal], y_all[cal]
        t_star = _continuous_temperature(z, y)
        t_fit = fit_temperature(z, y)
        assert abs(t_fit / t_star - 1) <= 0.005, (draw, t_fit, t_star)
        grid_t = SetValuedClassifier("pointwise_error", epsilon=0.1).temperatures
        worst_grid = max(worst_grid, abs(grid_t[int(np.argmin(nll_sums(z, y)))] / t_star - 1))
        # federated (5 clients with label skew) == centralized, bit for bit
        client = np.random.default_rng(draw).dirichlet(np.full(5, 0.5), 10)[y].cumsum(1)
        client = (client < np.random.default_rng(draw + 10).random((y.size, 1))).sum(1)
        fed = fit_federated_in_process(
            SetValuedClassifier("pointwise_error", epsilon=0.1), [None] * 5, [y[client == c] for c in range(5)],
            [z[client == c] for c in range(5)],
        )
        assert fed.temperature_ == t_fit
    # the grid point alone misses the optimum by more than the tolerance (what the refinement is for)
    assert worst_grid > 0.005


def test_pointwise_offset() -> None:
    p, y = _discrete_data()
    # cumsums a (.6,.85,.95,1), b (.4,.75,.9,1), c (.3,.58,.8,1): ε = 0.2 gives (2, 3, 3); r = 0.1 asks 0.9
    assert _atom_sets(np.eye(4, dtype=bool)[pointwise_error_k(p, 0.2, offset=0.1) - 1]).argmax(1).tolist() == [2, 2, 3]
    assert (pointwise_error_k(p, 0.2, offset=0.25) == 4).all()  # 1 - ε + r > 1: full sets
    model = SetValuedClassifier("pointwise_error", epsilon=0.2, offset=0.1, temperature_scaling=False)
    assert model.predict(p).sum(1).tolist() == np.repeat([3, 3, 4], COUNTS).tolist()
    # offset="sqrt": r = sqrt(L/n) from the (pooled) calibration size, centralized and federated
    z, pc, yc = _continuous(400, 5, n_labels=4)
    central = SetValuedClassifier("pointwise_error", epsilon=0.3, offset="sqrt").fit(pc, yc, logits=z)
    assert central.offset_ == math.sqrt(4 / 400)
    fed = fit_federated_in_process(
        SetValuedClassifier("pointwise_error", epsilon=0.3, offset="sqrt"), [pc[:150], pc[150:]], [yc[:150], yc[150:]],
        [z[:150], z[150:]],
    )
    assert fed.offset_ == central.offset_ and fed.temperature_ == central.temperature_
    np.testing.assert_array_equal(fed.predict(logits=z), central.predict(logits=z))
    assert central.predict(logits=z).sum() > SetValuedClassifier("pointwise_error", epsilon=0.3).fit(pc, yc, logits=z).predict(logits=z).sum()


def test_penalized_minimises_error_plus_lambda_size() -> None:
    p, _ = _discrete_data()
    err, avg, _ = _all_classifiers()
    for lam in (0.07, 0.12, 0.26, 0.5):
        mask = SetValuedClassifier("penalized", lam=lam).fit().predict(p)
        e, s = _err_size(_atom_sets(mask))
        assert e + lam * s == pytest.approx((err + lam * avg).min(), abs=1e-12)


def _survey_inverse(values: np.ndarray, n_points: int, k_bar: float) -> float:
    """Brute force ``inf{t : Ĝ(t) <= k̄}`` with ``Ĝ(t) = #{v >= t}/N``, in exact arithmetic: ``Ĝ`` is a left-continuous
    step function, so ``{t : Ĝ(t) <= k̄}`` is ``(u, ∞)`` or ``[u', ∞)``, and its infimum is the smallest pooled
    value ``u`` with ``Ĝ(u+) = #{v > u}/N <= k̄``."""
    budget = Fraction(repr(float(k_bar))) * n_points
    return min(float(u) for u in np.unique(values) if (values > u).sum() <= budget)


def test_average_size_thresholds_on_a_hand_made_input() -> None:
    # pooled values, largest first: .7 .6 .5 .4 .4 .3 .3 .2 .2 .2 .1 .1 (N = 4, L = 3)
    p = np.array([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.7, 0.2, 0.1], [0.4, 0.4, 0.2]])
    # k̄ -> (survey Ĝ⁻¹(k̄): the (⌊4k̄⌋ + 1)-th largest, exact_size: smallest t with #{v >= t} <= ⌊4k̄⌋)
    expected = {0.5: (0.5, 0.6), 1.0: (0.4, 0.5), 1.5: (0.3, 0.4), 2.0: (0.2, 0.3), 0.2: (0.7, math.inf)}
    # top-2 values, largest first: .7 .6 .5 .4 .4 .3 .3 .2 (hybrid, k = 2)
    expected_hybrid = {0.5: (0.5, 0.6), 1.0: (0.4, 0.5), 1.5: (0.3, 0.4), 1.75: (0.2, 0.3)}
    client = np.array([0, 1, 1, 0])
    for k_bar, (survey, exact) in expected.items():
        assert average_size_threshold(p, k_bar) == survey == _survey_inverse(p.ravel(), 4, k_bar)
        assert average_size_threshold(p, k_bar, size_rule="exact_size") == exact
        for rule, want in (("survey", survey), ("exact_size", exact)):
            central = SetValuedClassifier("average_size", k_bar=k_bar, size_rule=rule).fit(p)
            fed = fit_federated_in_process(
                SetValuedClassifier("average_size", k_bar=k_bar, size_rule=rule, delta=1e9), [p[client == 0], p[client == 1]]
            )
            assert central.threshold_ == fed.threshold_ == want, (k_bar, rule)
    for k_bar, (survey, exact) in expected_hybrid.items():
        top2 = -np.sort(-p, axis=1)[:, :2].ravel()
        assert hybrid_size_threshold(p, 2, k_bar) == survey == _survey_inverse(top2, 4, k_bar)
        assert hybrid_size_threshold(p, 2, k_bar, size_rule="exact_size") == exact
        for rule, want in (("survey", survey), ("exact_size", exact)):
            central = SetValuedClassifier("hybrid_size", k=2, k_bar=k_bar, size_rule=rule).fit(p)
            fed = fit_federated_in_process(
                SetValuedClassifier("hybrid_size", k=2, k_bar=k_bar, size_rule=rule, delta=1e9), [p[client == 0], p[client == 1]]
            )
            assert central.threshold_ == fed.threshold_ == want, (k_bar, rule)


@pytest.mark.parametrize("seed", range(6))
def test_survey_threshold_is_the_generalized_inverse(seed: int) -> None:
    """Random inputs (half of them with heavy ties): the threshold is the survey's Ĝ⁻¹(k̄) by brute force, the
    (⌊k̄N⌋ + 1)-th largest pooled value, and federated (4 clients, digests keeping every point) gives the same."""
    _, p, _ = _continuous(60, seed, n_labels=6)
    if seed % 2:
        p = np.round(p * 8) + 1  # many ties
        p /= p.sum(1, keepdims=True)
    client = np.random.default_rng(seed).integers(0, 4, p.shape[0])
    rng = np.random.default_rng(100 + seed)
    for k_bar in [0.5, 1.0, 2.5] + rng.uniform(0.05, 5.9, 4).round(3).tolist():
        t = average_size_threshold(p, k_bar)
        assert t == _survey_inverse(p.ravel(), 60, k_bar)
        assert t == np.sort(p.ravel())[::-1][int(np.floor(k_bar * 60 + 1e-9))]
        g = lambda u: (p >= u).sum() / 60  # noqa: E731
        assert g(t) > k_bar and g(np.nextafter(t, 2.0)) <= k_bar
        fed = fit_federated_in_process(
            SetValuedClassifier("average_size", k_bar=k_bar, delta=1e9), [p[client == c] for c in range(4)]
        )
        assert fed.threshold_ == t
        # exact_size is never below the survey threshold and keeps the unlabeled mean size <= k̄
        t_exact = average_size_threshold(p, k_bar, size_rule="exact_size")
        assert t_exact >= t and g(t_exact) <= k_bar
        if k_bar < 3:
            top3 = -np.sort(-p, axis=1)[:, :3].ravel()
            assert hybrid_size_threshold(p, 3, k_bar) == _survey_inverse(top3, 60, k_bar)


@pytest.mark.parametrize("size_rule", ["survey", "exact_size"])
def test_average_size_threshold_is_the_optimal_cut(size_rule: str) -> None:
    p, _ = _discrete_data()
    err, avg, _ = _all_classifiers()
    # pooled values sorted by mass: G(0.28) = (400 + 300·2 + 200·2)/900 = 14/9; the survey's inf{t : Ĝ(t) <= 14/9}
    # is the next value down, 0.25 (Ĝ(0.25) = 2: the tie adds all 400 copies)
    assert average_size_threshold(p, 14 / 9, size_rule) == (0.28 if size_rule == "exact_size" else 0.25)
    for k_bar in (0.5, 1.0, 14 / 9, 1.7, 2.0, 2.5, 3.2):
        t = average_size_threshold(p, k_bar, size_rule)
        mask = p >= t
        e, s = _err_size(_atom_sets(mask))
        # a cut is optimal for its own size budget (fractional-knapsack exchange argument)
        assert e == pytest.approx(err[avg <= s + 1e-12].min(), abs=1e-12)
        nxt = np.max(p[p < t]) if (p < t).any() else None
        if size_rule == "exact_size":
            # the largest cut within the budget: adding the next value would exceed k̄
            assert s <= k_bar + 1e-12
            if nxt is not None:
                assert (p >= nxt).sum() / p.shape[0] > k_bar
        else:
            # the smallest cut beyond the budget: one value up fits it
            assert s > k_bar
            above = p[p > t]
            assert above.size == 0 or (p >= above.min()).sum() / p.shape[0] <= k_bar


@pytest.mark.parametrize("size_rule", ["survey", "exact_size"])
def test_hybrid_size_threshold_is_the_optimal_cut_with_size_cap(size_rule: str) -> None:
    p, _ = _discrete_data()
    for k, k_bar in ((2, 1.2), (2, 1.5), (3, 2.0), (3, 2.6)):
        err, avg, _ = _all_classifiers(max_size=k)
        t = hybrid_size_threshold(p, k, k_bar, size_rule)
        mask = (p >= t) & top_k_mask(p, k)
        e, s = _err_size(_atom_sets(mask))
        assert (s <= k_bar + 1e-12 if size_rule == "exact_size" else s > k_bar) and mask.sum(1).max() <= k
        assert e == pytest.approx(err[avg <= s + 1e-12].min(), abs=1e-12)


def test_average_error_split_cp_closed_form() -> None:
    p, y = _discrete_data()
    n = y.size
    err, avg, _ = _all_classifiers()
    scores = np.sort(1 - p[np.arange(n), y])
    for eps in (0.05, 0.1, 0.2, 0.3, 0.5):
        q = average_error_threshold(p, y, eps)
        k = int(np.ceil((n + 1) * (1 - eps) - 1e-9))
        assert q == scores[k - 1]
        model = SetValuedClassifier("average_error", epsilon=eps).fit(p, y)
        e, s = _err_size(_atom_sets(model.predict(p)))
        assert e <= eps + 1e-12
        assert s == pytest.approx(avg[err <= e + 1e-12].min(), abs=1e-12)


def test_fbeta_root_matches_brute_force_optimum() -> None:
    p, _ = _discrete_data()
    err, avg, _ = _all_classifiers()
    for beta in (0.5, 1.0, 2.0):
        theta = fbeta_threshold(p, beta)
        # θ* solves β²θ = Σ_l E(p_l - θ)_+ (the survey's (1 + β) is a typo for (1 + β²); θ* does not involve it)
        assert beta**2 * theta == pytest.approx(np.mean(np.clip(p - theta, 0, None).sum(1)), abs=1e-12)
        e, s = _err_size(_atom_sets(p >= theta))
        f = (1 + beta**2) * (1 - e) / (beta**2 + s)
        best = ((1 + beta**2) * (1 - err) / (beta**2 + avg)).max()
        assert f == pytest.approx(best, abs=1e-12)
        assert theta == pytest.approx(best / (1 + beta**2), abs=1e-12)


def _continuous(n: int, seed: int, n_labels: int = 10, scale: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, n_labels)) * scale
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (p.cumsum(1) < rng.random((n, 1))).sum(1)
    return z, p, np.minimum(y, n_labels - 1)


def test_average_size_held_out_mean_size_within_monte_carlo_error() -> None:
    _, p_cal, _ = _continuous(4000, 0)
    _, p_test, _ = _continuous(40000, 1)
    for k_bar in (1.5, 3.0):
        sizes = SetValuedClassifier("average_size", k_bar=k_bar).fit(p_cal).predict(p_test).sum(1)
        se = sizes.std() / np.sqrt(sizes.size)
        # threshold estimation from 4000 unlabeled points adds about sd/sqrt(4000) of error: allow 4 combined SEs
        tol = 4 * np.sqrt(se**2 + sizes.var() / 4000)
        assert abs(sizes.mean() - k_bar) <= tol, (k_bar, sizes.mean(), tol)


@pytest.mark.parametrize(
    "framework,kw",
    [
        ("average_size", {"k_bar": 2.5}),
        ("hybrid_size", {"k": 4, "k_bar": 2.0}),
        ("average_error", {"epsilon": 0.1}),
        ("average_error", {"epsilon": 0.1, "rank": "fcp"}),
        ("f_beta", {"beta": 1.0}),
        ("pointwise_error", {"epsilon": 0.1}),
    ],
)
def test_federated_equals_centralized(framework: str, kw: dict) -> None:
    z, p, y = _continuous(3000, 2)
    z = 0.5 * z  # miscalibrated logits: the fitted temperature is not 1
    client = np.random.default_rng(3).integers(0, 4, y.size)
    parts = [client == k for k in range(4)]
    central = SetValuedClassifier(framework, **kw).fit(p, y, logits=z)
    fed = SetValuedClassifier(framework, delta=1e9, **kw)
    fit_federated_in_process(fed, [p[m] for m in parts], [y[m] for m in parts], [z[m] for m in parts])
    if framework == "pointwise_error":
        assert fed.temperature_ == central.temperature_ and central.temperature_ != 1.0
        np.testing.assert_array_equal(fed.predict(logits=z), central.predict(logits=z))
    elif framework == "f_beta":
        assert fed.threshold_ == pytest.approx(central.threshold_, rel=1e-12, abs=1e-15)
        np.testing.assert_array_equal(fed.predict(p), central.predict(p))
    elif kw.get("rank") == "fcp":
        s = np.sort(1 - p[np.arange(y.size), y])
        assert fed.threshold_ == s[int(np.ceil(0.9 * (y.size + 4) - 1e-9)) - 1]
    else:
        assert fed.threshold_ == central.threshold_
        np.testing.assert_array_equal(fed.predict(p), central.predict(p))


def test_federated_compressed_average_size_stays_within_digest_bound() -> None:
    _, p, _ = _continuous(5000, 4)
    client = np.arange(5000) % 5
    fed = fit_federated_in_process(SetValuedClassifier("average_size", k_bar=2.0, delta=250), [p[client == k] for k in range(5)])
    size = fed.predict(p).sum(1).mean()
    # digest error plus the survey rule's one extra order statistic (no ties in continuous data)
    assert abs(size - 2.0) <= np.pi / 250 * p.shape[1] + 1 / p.shape[0] + 1e-9


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"framework": "top5"}, "framework"),
        ({"framework": "top_k", "k": 0}, "k must be"),
        ({"framework": "top_k"}, "needs k"),
        ({"framework": "pointwise_error", "epsilon": 0.0}, "epsilon"),
        ({"framework": "average_error", "epsilon": 1.0}, "epsilon"),
        ({"framework": "average_size", "k_bar": 0}, "k_bar"),
        ({"framework": "f_beta", "beta": 0.0}, "beta"),
        ({"framework": "f_beta", "beta": -1.0}, "beta"),
        ({"framework": "penalized", "lam": 1.5}, "lam"),
        ({"framework": "hybrid_size", "k": 3, "k_bar": 3.0}, "k_bar"),
        ({"framework": "average_error", "epsilon": 0.1, "rank": "mean"}, "rank"),
        ({"framework": "average_size", "k_bar": 1.0, "size_rule": "exact"}, "size_rule"),
        ({"framework": "pointwise_error", "epsilon": 0.1, "offset": -0.1}, "offset"),
        ({"framework": "pointwise_error", "epsilon": 0.1, "offset": "log"}, "offset"),
        ({"framework": "pointwise_error", "epsilon": 0.1, "offset": "sqrt", "temperature_scaling": False}, "offset='sqrt'"),
    ],
)
def test_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SetValuedClassifier(**kwargs)


def test_bad_parameters_depending_on_labels() -> None:
    p, y = _discrete_data()
    with pytest.raises(ValueError, match="k must be < the number of labels"):
        top_k_mask(p, 4)
    with pytest.raises(ValueError, match="k must be < the number of labels"):
        SetValuedClassifier("top_k", k=4).predict(p)
    with pytest.raises(ValueError, match="k_bar"):
        SetValuedClassifier("average_size", k_bar=4.0).fit(p)
    with pytest.raises(ValueError, match="labels"):
        SetValuedClassifier("average_error", epsilon=0.1).fit(p)
    with pytest.raises(ValueError, match="probs"):
        SetValuedClassifier("average_size", k_bar=1.0).fit(p * 2)
    with pytest.raises(RuntimeError, match="not fitted"):
        SetValuedClassifier("average_size", k_bar=1.0).predict(p)
    with pytest.raises(ValueError, match="number of labels"):
        model = SetValuedClassifier("average_size", k_bar=1.0, delta=1e9)
        model.fit_federated([model.summarize(p), model.summarize(np.full((3, 5), 0.2))])
    with pytest.raises(ValueError, match="empty"):
        SetValuedClassifier("f_beta", beta=1.0).fit_federated([])
