"""Tests of class-conditional CP (standard / classwise / clustered), centralized and federated."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from flwr_gcfcp.methods.classcond import (
    ClassConditionalCP,
    FederatedClassConditionalCP,
    clustering_heuristic,
    fit_federated_in_process,
    min_points,
    null_cluster_reason,
)
from flwr_gcfcp.core.quantiles import split_conformal_threshold
from flwr_gcfcp.core.validation import InsufficientDataWarning

L = 8


def _data(n: int = 1600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose distribution depends on the class (two families), so clusters are meaningful."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, L, n)
    scale = np.where(y < L // 2, 0.3, 1.0)
    return rng.beta(2.0, 5.0, n) * scale, y


def _clients(y: np.ndarray, k: int = 5, seed: int = 1) -> np.ndarray:
    """Label-skewed client assignment (class c mostly on client c % k)."""
    rng = np.random.default_rng(seed)
    home = y % k
    other = rng.integers(0, k, y.size)
    return np.where(rng.random(y.size) < 0.7, home, other)


def test_min_points_and_heuristic() -> None:
    assert min_points(0.1) == 9 and min_points(0.2) == 4 and min_points(0.05) == 19
    # 100 classes with 20 points each: K' = 100, γ = 100/175, M = ⌊(4/7)·20/2⌋ = 5
    gamma, m = clustering_heuristic(np.full(100, 20), 0.1)
    assert gamma == pytest.approx(100 / 175) and m == 5
    # rare classes lift ñ to ⌈(1-α)/α⌉ = 9 and drop out of K'
    counts = np.r_[np.full(60, 12), np.full(40, 3)]
    gamma, m = clustering_heuristic(counts, 0.1)
    assert gamma == pytest.approx(60 / 135) and m == int(np.floor(60 / 135 * 9 / 2))
    # few classes, few points: M = ⌊(8/83)·10/2⌋ = 0 (no clustering)
    assert clustering_heuristic(np.full(8, 10), 0.1) == (pytest.approx(8 / 83), 0)
    assert clustering_heuristic(np.zeros(5, dtype=int), 0.1) == (0.0, 0)
    # Ding et al.'s rule: k-means only when 1 < M < K_c
    assert null_cluster_reason(2, 3, 9) is None
    assert "<= 1" in null_cluster_reason(1, 5, 9) and "<= 1" in null_cluster_reason(0, 5, 9)
    assert ">= 3 clusterable" in null_cluster_reason(3, 3, 9) and ">= 3 clusterable" in null_cluster_reason(7, 3, 9)
    assert "no class" in null_cluster_reason(2, 0, 9)


def test_standard_and_classwise_are_exact_order_statistics() -> None:
    s, y = _data()
    std = ClassConditionalCP("standard", 0.1, L).fit(s, y)
    assert np.all(std.thresholds_ == split_conformal_threshold(s, 0.1))
    cw = ClassConditionalCP("classwise", 0.1, L).fit(s, y)
    for c in range(L):
        sc = np.sort(s[y == c])
        k = int(np.ceil((sc.size + 1) * 0.9 - 1e-12))
        assert cw.thresholds_[c] == sc[k - 1]
    mask = cw.predict(np.tile(s[:, None], (1, L)))
    assert mask.dtype == bool and mask.shape == (s.size, L)


@pytest.mark.parametrize("m", [1, L, L + 3])
def test_too_few_or_too_many_clusters_use_the_null_cluster(m: int) -> None:
    s, y = _data()
    mask = np.random.default_rng(3).random(s.size) < 0.4
    cl = ClassConditionalCP("clustered", 0.1, L, n_clusters=m).fit(s, y, clustering_mask=mask)
    assert cl.n_clusterable_ == L and cl.n_clusters_requested_ == m
    assert cl.n_clusters_ == 0 and cl.null_classes_.tolist() == list(range(L)) and cl.cluster_thresholds_.size == 0
    assert ("<= 1" if m == 1 else f">= {L} clusterable") in cl.null_cluster_reason_
    std = ClassConditionalCP("standard", 0.1, L).fit(s[~mask], y[~mask])
    np.testing.assert_array_equal(cl.thresholds_, std.thresholds_)


def test_one_cluster_fewer_than_clusterable_classes_runs_kmeans() -> None:
    """M = K_c - 1 with two classes of identical clustering scores: those two share a cluster, the rest are alone."""
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(L), 200)
    s = rng.beta(2.0, 5.0, y.size) * (1 + y) / L
    mask = np.tile(np.arange(200) < 80, L)
    s[(y == 7) & mask] = s[(y == 6) & mask]  # classes 6 and 7: the same embedding
    cl = ClassConditionalCP("clustered", 0.1, L, n_clusters=L - 1).fit(s, y, clustering_mask=mask)
    assert cl.null_cluster_reason_ is None and cl.n_clusters_ == L - 1 and cl.null_classes_.size == 0
    groups = cl.class_to_cluster_
    assert groups[6] == groups[7] and len(set(groups.tolist())) == L - 1
    cw = ClassConditionalCP("classwise", 0.1, L).fit(s[~mask], y[~mask])
    np.testing.assert_array_equal(cl.thresholds_[:6], cw.thresholds_[:6])
    pair = ~mask & (y >= 6)
    assert cl.thresholds_[6] == cl.thresholds_[7] == split_conformal_threshold(s[pair], 0.1)


def _many_classes(n_big: int, seed: int = 11) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """100 classes: ``100 - n_big`` with 10 points (5 for clustering), ``n_big`` with 60 (30 for clustering).

    Ding et al.'s heuristic: ñ = 10, K' = 100, γ = 4/7, M = ⌊(4/7)·10/2⌋ = 2, and only the big classes have
    ⌈(1 - α)/α⌉ = 9 clustering points, so K_c = n_big (the CIFAR-100 n_avg = 10 situation).
    """
    rng = np.random.default_rng(seed)
    sizes = np.where(np.arange(100) < n_big, 60, 10)
    y = np.repeat(np.arange(100), sizes)
    s = rng.beta(2.0, 5.0, y.size) * np.where(y % 2 == 0, 0.4, 1.0)
    mask = np.concatenate([np.arange(n) < n // 2 for n in sizes])
    return s, y, mask


def test_many_classes_heuristic_m_at_least_clusterable_falls_back_to_standard() -> None:
    s, y, mask = _many_classes(n_big=2)
    assert clustering_heuristic(np.bincount(y), 0.1)[1] == 2
    cl = ClassConditionalCP("clustered", 0.1, 100).fit(s, y, clustering_mask=mask)
    assert cl.n_clusters_requested_ == 2 and cl.n_clusterable_ == 2 and cl.n_clusters_ == 0
    assert "M = 2 >= 2 clusterable" in cl.null_cluster_reason_
    std = ClassConditionalCP("standard", 0.1, 100).fit(s[~mask], y[~mask])
    np.testing.assert_array_equal(cl.thresholds_, std.thresholds_)
    # federated, label-skewed clients, default δ: the same fallback and the federated standard threshold
    client = np.arange(y.size) % 4
    sel = [client == k for k in range(4)]
    fed = fit_federated_in_process(
        FederatedClassConditionalCP("clustered", 0.1, 100), [s[c] for c in sel], [y[c] for c in sel],
        client_masks=[mask[c] for c in sel],
    )
    assert fed.n_clusters_ == 0 and fed.null_cluster_reason_ == cl.null_cluster_reason_
    fed_std = fit_federated_in_process(
        FederatedClassConditionalCP("standard", 0.1, 100), [s[c & ~mask] for c in sel], [y[c & ~mask] for c in sel]
    )
    np.testing.assert_array_equal(fed.thresholds_, fed_std.thresholds_)
    np.testing.assert_array_equal(fed.thresholds_, std.thresholds_)  # digests this small keep every point
    # one more clusterable class: 1 < M = 2 < K_c = 3, so k-means runs
    s3, y3, mask3 = _many_classes(n_big=3)
    cl3 = ClassConditionalCP("clustered", 0.1, 100).fit(s3, y3, clustering_mask=mask3)
    assert cl3.null_cluster_reason_ is None and cl3.n_clusters_ == 2 and cl3.null_classes_.size == 97


def test_gamma_and_fraction_describe_the_split_used() -> None:
    s, y = _data()
    gamma_h = clustering_heuristic(np.bincount(y, minlength=L), 0.1)[0]
    mask = np.random.default_rng(12).random(s.size) < 0.3
    for model in (ClassConditionalCP("clustered", 0.1, L), ClassConditionalCP("clustered", 0.1, L, gamma=0.6)):
        model.fit(s, y, clustering_mask=mask)
        assert model.gamma_ is None and model.clustering_fraction_ == mask.sum() / s.size
    drawn = ClassConditionalCP("clustered", 0.1, L).fit(s, y, rng=5)
    assert drawn.gamma_ == pytest.approx(gamma_h)
    assert drawn.clustering_fraction_ == (np.random.default_rng(5).random(s.size) < gamma_h).sum() / s.size
    client = _clients(y)
    sel = [client == k for k in range(5)]
    fed = fit_federated_in_process(FederatedClassConditionalCP("clustered", 0.1, L, gamma=0.6), [s[c] for c in sel],
                                   [y[c] for c in sel], client_masks=[mask[c] for c in sel])
    assert fed.gamma_ is None and fed.clustering_fraction_ == mask.sum() / s.size
    fed = fit_federated_in_process(FederatedClassConditionalCP("clustered", 0.1, L, gamma=0.6), [s[c] for c in sel],
                                   [y[c] for c in sel], rng=0)
    assert fed.gamma_ == 0.6 and abs(fed.clustering_fraction_ - 0.6) < 0.05


def test_clustered_groups_similar_classes_and_null_cluster() -> None:
    s, y = _data(4000)
    # class 7 gets only 5 points: it must land in the null cluster with the standard proper-set threshold
    keep = (y != 7) | (np.cumsum(y == 7) <= 5)
    s, y = s[keep], y[keep]
    mask = np.random.default_rng(5).random(s.size) < 0.5
    mask[y == 7] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error", InsufficientDataWarning)
        cl = ClassConditionalCP("clustered", 0.1, L, n_clusters=2).fit(s, y, clustering_mask=mask)
    assert cl.class_to_cluster_[7] == -1
    assert cl.thresholds_[7] == split_conformal_threshold(s[~mask], 0.1)
    groups = cl.class_to_cluster_[:7]
    assert len(set(groups[:4].tolist())) == 1 and len(set(groups[4:].tolist())) == 1 and groups[0] != groups[4]


def test_heuristic_split_is_reproducible() -> None:
    s, y = _data()
    a = ClassConditionalCP("clustered", 0.1, L).fit(s, y, rng=7)
    b = ClassConditionalCP("clustered", 0.1, L).fit(s, y, rng=7)
    np.testing.assert_array_equal(a.thresholds_, b.thresholds_)
    assert a.gamma_ == pytest.approx(clustering_heuristic(np.bincount(y, minlength=L), 0.1)[0])


def test_classwise_rare_and_absent_classes_get_inf_with_warning() -> None:
    s, y = _data(400)
    keep = (y != 2) & ((y != 3) | (np.cumsum(y == 3) <= 4))
    with pytest.warns(InsufficientDataWarning, match="2 classes"):
        cw = ClassConditionalCP("classwise", 0.1, L).fit(s[keep], y[keep])
    assert np.isinf(cw.thresholds_[2]) and np.isinf(cw.thresholds_[3]) and np.isfinite(cw.thresholds_[0])
    assert cw.predict(np.full((3, L), 5.0))[:, [2, 3]].all()


@pytest.mark.parametrize("method", ["standard", "classwise", "clustered"])
@pytest.mark.parametrize("merge", [True, False])
def test_federated_large_delta_equals_centralized_exactly(method: str, merge: bool) -> None:
    s, y = _data(3000)
    client = _clients(y)
    mask = np.random.default_rng(8).random(s.size) < 0.45
    # clustered: the heuristic M = 16 >= L would give the null cluster, so ask for 3 clusters of the 8 classes
    kw = {"n_clusters": 3} if method == "clustered" else {}
    central = ClassConditionalCP(method, 0.1, L, **kw).fit(s, y, clustering_mask=mask)
    if method == "clustered":
        assert central.n_clusters_ == 3
    fed = FederatedClassConditionalCP(method, 0.1, L, delta=1e7, merge=merge, **kw)
    fit_federated_in_process(
        fed,
        [s[client == k] for k in range(5)],
        [y[client == k] for k in range(5)],
        client_masks=[mask[client == k] for k in range(5)],
    )
    np.testing.assert_array_equal(fed.thresholds_, central.thresholds_)
    np.testing.assert_array_equal(fed.class_to_cluster_, central.class_to_cluster_)
    # lossless digests: the conservative option changes nothing
    cons = FederatedClassConditionalCP(method, 0.1, L, delta=1e7, conservative=True, merge=merge, **kw)
    fit_federated_in_process(cons, [s[client == k] for k in range(5)], [y[client == k] for k in range(5)],
                             client_masks=[mask[client == k] for k in range(5)])
    np.testing.assert_array_equal(cons.thresholds_, central.thresholds_)


def test_federated_heuristic_gamma_from_count_round() -> None:
    s, y = _data(3000)
    client = _clients(y)
    fed = FederatedClassConditionalCP("clustered", 0.1, L, delta=250)
    fit_federated_in_process(fed, [s[client == k] for k in range(5)], [y[client == k] for k in range(5)], rng=0)
    assert fed.gamma_ == pytest.approx(clustering_heuristic(np.bincount(y, minlength=L), 0.1)[0])
    assert np.all(np.isfinite(fed.thresholds_))


def test_compressed_digests_and_conservative_correction() -> None:
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 20000)
    s = rng.random(20000)
    client = rng.integers(0, 4, s.size)
    args = ([s[client == k] for k in range(4)], [y[client == k] for k in range(4)])
    plain = fit_federated_in_process(FederatedClassConditionalCP("classwise", 0.1, 2, delta=100), *args)
    cons = fit_federated_in_process(FederatedClassConditionalCP("classwise", 0.1, 2, delta=100, conservative=True), *args)
    exact = ClassConditionalCP("classwise", 0.1, 2).fit(s, y).thresholds_
    assert np.all(np.isfinite(cons.thresholds_)) and np.all(cons.thresholds_ > plain.thresholds_)
    for c in range(2):
        sc = s[y == c]
        cover = lambda q: np.mean(sc <= q)  # noqa: E731
        # plain: coverage of its own calibration pool >= 1 - α - π/δ; conservative: >= 1 - α
        assert cover(plain.thresholds_[c]) >= 0.9 - np.pi / 100 - 1e-12
        assert cover(cons.thresholds_[c]) >= cover(exact[c]) - 1e-12


def test_federated_class_absent_from_every_client_warns() -> None:
    s, y = _data(2000)
    keep = y != 5
    s, y = s[keep], y[keep]
    client = _clients(y)
    fed = FederatedClassConditionalCP("classwise", 0.1, L, delta=250)
    with pytest.warns(InsufficientDataWarning, match="no calibration point on any client"):
        fit_federated_in_process(fed, [s[client == k] for k in range(5)], [y[client == k] for k in range(5)])
    assert np.isinf(fed.thresholds_[5])


def test_probabilities_with_aps_score() -> None:
    rng = np.random.default_rng(10)
    logits = rng.normal(size=(2000, L)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(L, p=row) for row in p])
    model = ClassConditionalCP("clustered", 0.1, L, score="aps").fit(p[:1000], y[:1000], rng=0)
    sets = model.predict_probs(p[1000:], rng=1)
    cov = sets[np.arange(1000), y[1000:]].mean()
    assert 0.85 <= cov <= 0.97


def test_bad_inputs() -> None:
    s, y = _data(200)
    with pytest.raises(ValueError, match="method"):
        ClassConditionalCP("mondrian", 0.1, L)
    with pytest.raises(ValueError, match="alpha"):
        ClassConditionalCP("standard", 1.5, L)
    with pytest.raises(ValueError, match="gamma"):
        ClassConditionalCP("clustered", 0.1, L, gamma=1.5)
    with pytest.raises(ValueError, match="n_clusters"):
        ClassConditionalCP("clustered", 0.1, L, n_clusters=0)
    with pytest.raises(ValueError, match="n_classes"):
        ClassConditionalCP("standard", 0.1, 1)
    with pytest.raises(ValueError, match="labels"):
        ClassConditionalCP("standard", 0.1, L).fit(s, y + L)
    with pytest.raises(ValueError, match="scores"):
        ClassConditionalCP("standard", 0.1, L).fit(np.tile(s[:, None], (1, L)), y)
    with pytest.raises(ValueError, match="clustering_mask"):
        ClassConditionalCP("clustered", 0.1, L).fit(s, y, clustering_mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="score_matrix"):
        ClassConditionalCP("standard", 0.1, L).fit(s, y).predict(np.zeros((2, L + 1)))
    fed = FederatedClassConditionalCP("classwise", 0.1, L, delta=250)
    payload = fed.summarize(s, y)
    with pytest.raises(ValueError, match="n_classes"):
        FederatedClassConditionalCP("classwise", 0.1, L + 1, delta=250).fit([payload])
    with pytest.raises(ValueError, match="clust/offsets"):
        FederatedClassConditionalCP("clustered", 0.1, L, delta=250, gamma=0.5).fit([payload])
    with pytest.raises(ValueError, match="delta"):
        FederatedClassConditionalCP("classwise", 0.1, L, delta=0)
    with pytest.raises(ValueError, match="gamma"):
        FederatedClassConditionalCP("clustered", 0.1, L).summarize(s, y)
