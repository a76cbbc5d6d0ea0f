"""Tests for flwr_gcfcp.core.scores: brute-force checks against per-point loops, consistency, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from flwr_gcfcp.core.scores import (
    APSScore,
    LACScore,
    RAPSScore,
    ScoreFunction,
    absolute_residual,
    make_score,
    softmax,
)


def tied_probs(n: int, n_labels: int, seed: int) -> np.ndarray:
    """Random probability rows with many exact ties (small integer counts, normalised)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 4, size=(n, n_labels)).astype(float)
    counts[counts.sum(axis=1) == 0, 0] = 1.0
    return counts / counts.sum(axis=1, keepdims=True)


def smooth_probs(n: int, n_labels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return softmax(rng.normal(scale=2.0, size=(n, n_labels)))


def slow_aps(probs: np.ndarray, u: np.ndarray, lam: float = 0.0, k_reg: int = 0) -> np.ndarray:
    """Per-point loop: labels ordered by (-p, label); score = mass strictly above + u p_y + rank penalty."""
    n, n_labels = probs.shape
    out = np.empty((n, n_labels))
    for i in range(n):
        order = sorted(range(n_labels), key=lambda c: (-probs[i, c], c))
        for r, label in enumerate(order):
            above = sum(probs[i, c] for c in order[:r])
            out[i, label] = above + u[i] * probs[i, label] + max(0.0, lam * ((r + 1) - k_reg))
    return out


# ------------------------------------------------------------------------------------------------- softmax


def test_softmax_matches_naive_and_sums_to_one():
    z = np.random.default_rng(0).normal(size=(50, 7))
    p = softmax(z)
    naive = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(p, naive, rtol=1e-12)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)


def test_softmax_is_stable_for_huge_logits_and_applies_temperature():
    z = np.array([[1000.0, 1001.0, 999.0], [-1e4, -1e4, -1e4]])
    p = softmax(z)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p[1], 1 / 3)
    np.testing.assert_allclose(p[0], softmax(np.array([[1.0, 2.0, 0.0]]))[0])
    np.testing.assert_allclose(softmax(z, temperature=2.5), softmax(z / 2.5))
    # high temperature flattens, low temperature sharpens
    assert softmax(z, 100.0)[0].max() < p[0].max() < softmax(z, 0.1)[0].max()
    np.testing.assert_allclose(softmax(np.array([1.0, 2.0])), softmax(np.array([[1.0, 2.0]]))[0])


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), "2", True])
def test_softmax_rejects_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        softmax(np.zeros((2, 3)), temperature=temperature)


def test_softmax_rejects_nan_logits():
    with pytest.raises(ValueError, match="logits"):
        softmax(np.array([[0.0, np.nan]]))


# ---------------------------------------------------------------------------------------------------- LAC


def test_lac_is_one_minus_p():
    p = smooth_probs(30, 5, 1)
    y = np.random.default_rng(1).integers(0, 5, 30)
    np.testing.assert_array_equal(LACScore().score_matrix(p), 1.0 - p)
    np.testing.assert_array_equal(LACScore().calibration_scores(p, y), 1.0 - p[np.arange(30), y])


# ------------------------------------------------------------------------------------------- APS and RAPS


@pytest.mark.parametrize("maker", [tied_probs, smooth_probs])
@pytest.mark.parametrize("n_labels", [2, 3, 10])
def test_aps_matches_slow_loop(maker, n_labels):
    p = maker(200, n_labels, seed=n_labels)
    u = np.random.default_rng(7).random(len(p))
    np.testing.assert_allclose(APSScore(seed=0).score_matrix(p, rng=7), slow_aps(p, u), rtol=0, atol=1e-12)
    det = APSScore(randomized=False).score_matrix(p)
    np.testing.assert_allclose(det, slow_aps(p, np.ones(len(p))), rtol=0, atol=1e-12)


@pytest.mark.parametrize("lam,k_reg", [(0.01, 5), (0.3, 1), (0.5, 0), (0.0, 2), (1.0, 20)])
@pytest.mark.parametrize("randomized", [True, False])
def test_raps_matches_slow_loop(lam, k_reg, randomized):
    p = tied_probs(150, 12, seed=3)
    u = np.random.default_rng(11).random(len(p)) if randomized else np.ones(len(p))
    got = RAPSScore(lam=lam, k_reg=k_reg, randomized=randomized).score_matrix(p, rng=11)
    np.testing.assert_allclose(got, slow_aps(p, u, lam, k_reg), rtol=0, atol=1e-12)


def test_ties_are_broken_by_label_index():
    p = np.array([[0.25, 0.25, 0.25, 0.25], [0.1, 0.4, 0.1, 0.4]])
    det = APSScore(randomized=False).score_matrix(p)
    np.testing.assert_allclose(det[0], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(det[1], [0.9, 0.4, 1.0, 0.8])
    raps = RAPSScore(lam=0.1, k_reg=1, randomized=False).score_matrix(p)
    np.testing.assert_allclose(raps[0], [0.25, 0.6, 0.95, 1.3])


@pytest.mark.parametrize(
    "score", [LACScore(), APSScore(), APSScore(randomized=False), RAPSScore(), RAPSScore(randomized=False)]
)
def test_calibration_scores_equal_score_matrix_column_exactly(score):
    p = tied_probs(300, 10, seed=5)
    y = np.random.default_rng(5).integers(0, 10, 300)
    matrix = score.score_matrix(p, rng=42)
    np.testing.assert_array_equal(matrix[np.arange(300), y], score.calibration_scores(p, y, rng=42))
    gen_a, gen_b = np.random.default_rng(9), np.random.default_rng(9)
    np.testing.assert_array_equal(
        score.score_matrix(p, rng=gen_a)[np.arange(300), y], score.calibration_scores(p, y, rng=gen_b)
    )


def test_randomness_is_shared_across_labels_of_a_point():
    p = smooth_probs(100, 6, seed=2)
    rand = APSScore().score_matrix(p, rng=3)
    det = APSScore(randomized=False).score_matrix(p)
    u = 1.0 - (det - rand) / p  # det - rand = (1 - U) p_y
    np.testing.assert_allclose(u, u[:, :1].repeat(6, axis=1), atol=1e-9)
    assert np.all((u >= 0) & (u < 1))


def test_rng_none_uses_persistent_seeded_generator():
    p = smooth_probs(50, 4, seed=0)
    a, b = APSScore(seed=3), APSScore(seed=3)
    first = a.score_matrix(p)
    np.testing.assert_array_equal(first, b.score_matrix(p))  # reproducible from the seed
    assert not np.array_equal(first, a.score_matrix(p))  # successive calls draw fresh U
    assert not np.array_equal(first, APSScore(seed=4).score_matrix(p))


def test_randomized_aps_is_uniform_for_a_calibrated_model():
    # If y ~ p(x), the randomized APS score of the true label is exactly Unif(0, 1).
    rng = np.random.default_rng(0)
    p = smooth_probs(20000, 10, seed=1)
    y = (p.cumsum(axis=1) < rng.random((len(p), 1))).sum(axis=1)
    s = np.sort(APSScore().calibration_scores(p, y, rng=1))
    ecdf = np.arange(1, len(s) + 1) / len(s)
    assert np.max(np.abs(ecdf - s)) < 0.015
    det = np.sort(APSScore(randomized=False).calibration_scores(p, y))
    assert np.max(np.abs(ecdf - det)) > 0.05  # U = 1 is not uniform: the check can fail


def test_deterministic_aps_top_label_and_last_label():
    p = smooth_probs(40, 8, seed=4)
    det = APSScore(randomized=False).score_matrix(p)
    np.testing.assert_allclose(det[np.arange(40), p.argmax(axis=1)], p.max(axis=1))
    np.testing.assert_allclose(det.max(axis=1), 1.0, atol=1e-12)


# ------------------------------------------------------------------------------------------ make_score


def test_make_score_names_and_kwargs():
    assert isinstance(make_score("softmax"), LACScore)
    assert isinstance(make_score("LAC"), LACScore)
    assert type(make_score("aps")) is APSScore
    raps = make_score("raps", lam=0.2, k_reg=2, randomized=False, seed=4)
    assert isinstance(raps, RAPSScore) and (raps.lam, raps.k_reg, raps.randomized, raps.seed) == (0.2, 2, False, 4)
    assert isinstance(raps, ScoreFunction)


def test_make_score_errors():
    with pytest.raises(ValueError, match="name.*'thr'"):
        make_score("thr")
    with pytest.raises(ValueError, match="lam"):
        make_score("aps", lam=0.1)


# ------------------------------------------------------------------------------------------- bad inputs


def test_bad_probabilities_and_labels_are_named():
    p = smooth_probs(5, 3, seed=0)
    y = np.array([0, 1, 2, 0, 1])
    bad_sum = p.copy()
    bad_sum[2, 0] += 0.1
    for score in (LACScore(), APSScore(), RAPSScore()):
        with pytest.raises(ValueError, match="probs rows must sum to 1.*row 2"):
            score.score_matrix(bad_sum)
        with pytest.raises(ValueError, match="probs rows must sum to 1"):
            score.calibration_scores(bad_sum, y)
        nan = p.copy()
        nan[1, 1] = np.nan
        with pytest.raises(ValueError, match="probs must be finite"):
            score.calibration_scores(nan, y)
        with pytest.raises(ValueError, match="labels must lie in \\[0, 3\\).*first 3 at index 4"):
            score.calibration_scores(p, np.array([0, 1, 2, 0, 3]))
        with pytest.raises(ValueError, match="mismatched lengths: probs=5, labels=4"):
            score.calibration_scores(p, y[:4])
        with pytest.raises(ValueError, match="probs must be 2-dimensional"):
            score.score_matrix(p[0])
        with pytest.raises(ValueError, match="labels must be integers"):
            score.calibration_scores(p, y + 0.5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"lam": -0.1}, "lam"),
        ({"lam": float("nan")}, "lam"),
        ({"k_reg": -1}, "k_reg"),
        ({"k_reg": 1.5}, "k_reg"),
        ({"seed": -3}, "seed"),
        ({"randomized": "yes"}, "randomized"),
    ],
)
def test_bad_score_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RAPSScore(**kwargs)


@pytest.mark.parametrize("rng", [-1, 1.5, "seed", np.random.RandomState(0)])
def test_bad_rng(rng):
    with pytest.raises(ValueError, match="rng"):
        APSScore().score_matrix(smooth_probs(3, 3, 0), rng=rng)


# ----------------------------------------------------------------------------------------------- regression


def test_absolute_residual():
    np.testing.assert_array_equal(absolute_residual([1.0, -2.0, 3.0], [0.5, 1.0, 3.0]), [0.5, 3.0, 0.0])
    with pytest.raises(ValueError, match="mismatched lengths: y=3, y_pred=2"):
        absolute_residual([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="y_pred must be finite"):
        absolute_residual([1.0, 2.0], [1.0, np.nan])
    with pytest.raises(ValueError, match="y must be 1-dimensional"):
        absolute_residual([[1.0, 2.0]], [1.0, 2.0])
