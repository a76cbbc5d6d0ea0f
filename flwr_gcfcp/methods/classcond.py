"""Class-conditional conformal prediction: standard, classwise and clustered (Ding et al.), centralized and federated.

All three methods give one threshold per class ``q[y]`` and the set ``C(x) = {y : s(x, y) <= q[y]}``
(``<=``, scores are nonconformity scores):

``standard``
    one split-CP threshold from every calibration score (marginal coverage).
``classwise``
    one split-CP threshold per class from that class's scores. A class with fewer than ``(1 - α)/α`` points
    (including a class with no calibration data at all) gets ``+inf`` (the label is always in the set) and an
    :class:`~flwr_gcfcp.core.validation.InsufficientDataWarning`.
``clustered``
    Ding et al. (2023). Each calibration point goes to the *clustering* set with probability γ, otherwise to the
    *proper* set. Classes with fewer than ``(1 - α)/α`` clustering points form the *null cluster*, whose threshold
    is the standard threshold of the proper set. Every other class is embedded by the quantiles of its clustering
    scores at levels 0.5, 0.6, 0.7, 0.8, 0.9; k-means (scikit-learn, ``n_init=10``, sample weight ``sqrt(n_y)``)
    groups the embeddings into M clusters; each cluster's threshold is the split-CP order statistic of the
    proper-set scores of its classes (``+inf`` with a warning when the cluster has too few points).
    Heuristic (Ding et al. App. B.3 and their code): ``ñ = max(min_y n_y, ⌈(1 - α)/α⌉)`` over the full calibration
    counts, ``K' = #{y : n_y >= ñ}``, ``γ = K'/(K' + 75)``, ``M = ⌊γ ñ / 2⌋``. Both are overridable (``gamma=``,
    ``n_clusters=``). Null-cluster rule (their code): k-means runs only when ``1 < M < K_c``, ``K_c`` being the
    number of classes with at least ``⌈(1 - α)/α⌉`` clustering points; otherwise *every* class goes to the null
    cluster, so clustered CP is standard CP on the proper set (``null_cluster_reason_`` says why). The heuristics,
    this rule and the deliberate differences from Ding et al.'s code are in ``docs/class_conditional.md``.

Ranks are integers: the threshold of a pool of ``W`` points is its ``k``-th smallest score with
``k = quantiles.conformal_rank(W, α) = ⌈(W + 1)(1 - α)⌉`` (``+inf`` when ``k > W``).

Embedding quantiles use the step (inverted-CDF) definition ``min{v : F_n(v) >= u}``, not numpy's default linear
interpolation (Ding et al.'s code uses the latter): this is what a digest answers, so the federated embeddings
equal the centralized ones exactly whenever the digests keep every point.

Federated protocol (:class:`FederatedClassConditionalCP`)
--------------------------------------------------------
* (clustered with the γ heuristic only) round 0: each client sends its per-class counts
  (:meth:`~FederatedClassConditionalCP.count_summary`); the server returns γ (:meth:`~FederatedClassConditionalCP.plan`).
* Each client assigns each of its points to the clustering set with probability γ and sends, per class and per
  part (clustering / proper; one part for standard and classwise), an arcsine T-digest of the scores with integer
  unit weights (:func:`flwr_gcfcp.core.tdigest.build_digest`), so merged counts are exact integers.
* The server merges the client digests per class (:func:`flwr_gcfcp.core.tdigest.merge_digests`), computes the
  embeddings from the merged clustering digests, the heuristic M from the exact merged counts, runs the same
  k-means, and computes every threshold by the exact integer rank on the merged digest counts
  (``min{mean_c : Σ_{c' <= c} W_c' >= k}``; the centroids of a cluster's classes are pooled without recompression).
* With δ large enough that every digest keeps every point (δ > π · n for a digest of n points suffices) the
  federated thresholds equal the centralized ones exactly, given the same clustering/proper split.

Coverage guarantee of the federated version. Let ``ε = π/δ`` bound the sup-distance between a merged per-class
digest's step CDF and the empirical CDF of the scores it summarises (GC-FCP Lemma 5.1 / Corollary B.1; a pool of
several digests is a convex combination of their CDFs, so the bound carries over to a cluster's pooled centroids).
A threshold read at rank ``k`` from ``W`` points then lies at or above the ``⌈k - εW⌉``-th smallest true score,
so for a test point exchangeable with the pool (the class for classwise, the cluster given the clustering for
clustered, every point for standard)

    P(s(X, Y) <= q)  >=  (k - εW)/(W + 1)  >=  1 - α - ε  >=  1 - α - π/δ.

The server recompression of a merge can add its own error (this repository proves ``2 sin(π/δ)`` for a merged
digest, :func:`flwr_gcfcp.core.tdigest.merge_digests`), so the federated fit with ``conservative=True`` pools the client
digests without recompressing them: a pool is a convex combination of single digests, each within ``sin(π/δ)``.
``conservative=True`` reads the threshold at rank ``k + ⌈εW⌉`` instead (``+inf`` when this exceeds ``W``; no
correction for a pool whose centroids all have weight 1, since those are the exact scores), which
restores ``P(s(X, Y) <= q) >= k/(W + 1) >= 1 - α`` exactly (it is at least as strong as asking for level
``1 - α + π/δ``). For clustered CP the per-class statement is, as in Ding et al. Prop. 3, up to the within-cluster
TV distance of the class score distributions.

This module does not import flwr or torch.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from numbers import Integral, Real
from typing import Mapping, Sequence

import numpy as np

from ..core.quantiles import conformal_rank
from ..core.validation import (
    InsufficientDataWarning,
    alpha_fraction,
    check_alpha,
    check_delta,
    check_labels,
    check_same_length,
    check_scores,
)

__all__ = [
    "METHODS",
    "QUANTILE_LEVELS",
    "ClassConditionalCP",
    "FederatedClassConditionalCP",
    "clustering_heuristic",
    "fit_federated_in_process",
    "min_points",
    "null_cluster_reason",
    "split_clustering",
]

METHODS = ("standard", "classwise", "clustered")
QUANTILE_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9)
_PARTS = ("clust", "proper")


# ----------------------------------------------------------------------------------------------- integer ranks
def _conformal_rank(n: int, alpha: object) -> int:
    """``ceil((n + 1)(1 - α))`` exactly (delegates to :func:`flwr_gcfcp.core.quantiles.conformal_rank`)."""
    return int(conformal_rank(int(n), alpha))


def min_points(alpha: object) -> int:
    """Smallest pool size with a finite split-CP threshold: ``⌈(1 - α)/α⌉`` (exact).

    ``⌈(n + 1)(1 - α)⌉ <= n`` holds iff ``n >= (1 - α)/α``.
    """
    a = alpha_fraction(alpha)
    return int(math.ceil((1 - a) / a))


def _digest_error(delta: float | None) -> float:
    return 0.0 if delta is None else math.pi / float(delta)


def _extra_rank(total: int, eps: float) -> int:
    """``⌈ε W⌉`` with a relative guard of 1e-12 against rounding down."""
    if eps <= 0 or total <= 0:
        return 0
    return int(math.ceil(total * eps * (1 + 1e-12)))


def _pool(values: Sequence[np.ndarray], weights: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate weighted samples and sort them by value (stable)."""
    if len(values) == 0:
        return np.empty(0), np.empty(0, dtype=np.int64)
    v = np.concatenate([np.asarray(x, dtype=np.float64) for x in values])
    w = np.concatenate([np.asarray(x, dtype=np.int64) for x in weights])
    order = np.argsort(v, kind="stable")
    return v[order], w[order]


def _rank_value(values_sorted: np.ndarray, cumw: np.ndarray, k: int) -> float:
    """Smallest value whose cumulative integer weight reaches ``k``; ``+inf`` if the total is below ``k``."""
    if k <= 0:
        return -np.inf
    if cumw.size == 0 or k > int(cumw[-1]):
        return np.inf
    return float(values_sorted[int(np.searchsorted(cumw, k, side="left"))])


def _pool_threshold(values: Sequence[np.ndarray], weights: Sequence[np.ndarray], alpha: object, eps: float) -> tuple[float, int]:
    """Split-CP threshold of a pool of weighted samples (exact integer ranks) and the pool's total count."""
    v, w = _pool(values, weights)
    cumw = np.cumsum(w)
    total = int(cumw[-1]) if cumw.size else 0
    # centroids of weight 1 are exact points: a pool of them has no sketch error and needs no correction
    lossy = bool((w > 1).any())
    k = _conformal_rank(total, alpha) + (_extra_rank(total, eps) if lossy else 0)
    return _rank_value(v, cumw, k), total


def _step_quantiles(values: np.ndarray, weights: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Inverted-CDF quantiles ``min{v : W(<= v) >= u W}`` of integer-weighted samples (exact rational levels)."""
    order = np.argsort(values, kind="stable")
    v = np.asarray(values, dtype=np.float64)[order]
    cumw = np.cumsum(np.asarray(weights, dtype=np.int64)[order])
    total = int(cumw[-1])
    out = np.empty(len(levels))
    for j, u in enumerate(levels):
        frac = Fraction(repr(float(u)))
        k = max(1, int(math.ceil(frac * total)))
        out[j] = _rank_value(v, cumw, k)
    return out


def split_clustering(labels: object, gamma: float, rng: object = None) -> np.ndarray:
    """Assign each point to the clustering set independently with probability ``gamma``.

    Parameters
    ----------
    labels : array_like, shape (n,)
        Only the length is used.
    gamma : float in [0, 1]
    rng : None, int or numpy.random.Generator

    Returns
    -------
    numpy.ndarray of bool, shape (n,)
        True for clustering points, False for proper calibration points.
    """
    gamma = _check_gamma(gamma)
    n = len(np.asarray(labels))
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return gen.random(n) < gamma


def _check_gamma(gamma: object) -> float:
    if isinstance(gamma, (bool, np.bool_)) or not isinstance(gamma, (Real, np.number)) or not 0 <= float(gamma) <= 1:
        raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
    return float(gamma)


def clustering_heuristic(class_counts: object, alpha: object) -> tuple[float, int]:
    """Ding et al.'s γ and M from the full calibration counts per class.

    ``ñ = max(min_y n_y, ⌈(1 - α)/α⌉)``, ``K' = #{y : n_y >= ñ}``, ``γ = K'/(K' + 75)``, ``M = ⌊γ ñ / 2⌋``.
    (Ding et al.'s code uses ``⌊γ ñ⌋/ñ`` as γ; ``M`` is the same either way.) ``M`` may be 0 or 1,
    or exceed the number of classes that turn out clusterable: the fit then uses the null cluster for every class
    (:func:`null_cluster_reason`).

    Returns
    -------
    gamma : float
    n_clusters : int
        ``M >= 0``.
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any():
        raise ValueError(f"class_counts must be a non-empty 1-D array of counts >= 0, got {class_counts!r}")
    n_tilde = max(int(counts.min()), min_points(alpha))
    k_rem = int((counts >= n_tilde).sum())
    if k_rem == 0:
        return 0.0, 0
    gamma = Fraction(k_rem, k_rem + 75)
    return float(gamma), int(math.floor(gamma * n_tilde / 2))


def null_cluster_reason(n_clusters: int, n_clusterable: int, need: int) -> str | None:
    """Why clustered CP puts every class in the null cluster, or None when it runs k-means.

    Ding et al.'s rule (their code): k-means runs only when ``1 < M < K_c``, ``K_c`` being the number of classes
    with at least ``need = ⌈(1 - α)/α⌉`` clustering points. Otherwise every class gets the standard threshold of the
    proper set: with ``M <= 1`` there is nothing to separate, and with ``M >= K_c`` k-means could only make
    (near-)singleton clusters, each calibrated on the few proper-set points of one class (``+inf`` below ``need``).

    Parameters
    ----------
    n_clusters : int
        The requested M (heuristic or given).
    n_clusterable : int
        ``K_c``.
    need : int
        ``⌈(1 - α)/α⌉`` (only quoted in the message).
    """
    if n_clusterable == 0:
        return f"no class has at least {need} clustering points"
    if n_clusters <= 1:
        return f"M = {n_clusters} <= 1"
    if n_clusters >= n_clusterable:
        return f"M = {n_clusters} >= {n_clusterable} clusterable classes (at least {need} clustering points each)"
    return None


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (Integral, np.integer)) or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _warn_insufficient(what: str, ids: Sequence[int], alpha: object, need: int) -> None:
    if len(ids):
        shown = ", ".join(str(int(i)) for i in list(ids)[:20]) + (" ..." if len(ids) > 20 else "")
        warnings.warn(
            f"{len(ids)} {what} have too few calibration points for a finite threshold at alpha={alpha!r} "
            f"(fewer than (1 - alpha)/alpha = {need}, or the conservative digest correction exceeds the pool) "
            f"({shown}): their threshold is +inf (every such label is always in the set)",
            InsufficientDataWarning,
            stacklevel=3,
        )


# ------------------------------------------------------------------------------------------------ the estimator
class ClassConditionalCP:
    """Centralized standard / classwise / clustered class-conditional conformal prediction.

    Parameters
    ----------
    method : {"standard", "classwise", "clustered"}
    alpha : float in (0, 1)
        Miscoverage level, read exactly.
    n_classes : int >= 2
        Number of labels L.
    gamma : float in [0, 1], optional
        Clustering fraction (clustered only); default: Ding et al.'s heuristic.
    n_clusters : int >= 1, optional
        Number of k-means clusters M (clustered only); default: heuristic. Unless ``1 < M < K_c`` (``K_c`` classes
        with enough clustering points) every class goes to the null cluster (:func:`null_cluster_reason`).
    quantile_levels : sequence of float
        Embedding quantile levels (default 0.5, 0.6, 0.7, 0.8, 0.9).
    n_init : int
        k-means restarts (default 10).
    random_state : int
        Seed of k-means and, when ``rng`` is not given to :meth:`fit`, of the clustering split.
    score : str or ScoreFunction, optional
        When given, :meth:`fit` also accepts an ``(n, L)`` probability matrix and :meth:`predict_probs` exists.

    Attributes
    ----------
    thresholds_ : numpy.ndarray, shape (L,)
        Per-class thresholds (``+inf`` possible).
    class_to_cluster_ : numpy.ndarray of int, shape (L,)
        Clustered: cluster of each class, ``-1`` for the null cluster. Standard: all 0. Classwise: ``arange(L)``.
    cluster_thresholds_ : numpy.ndarray
        Clustered: threshold per cluster. ``null_threshold_``: the null cluster's (standard) threshold.
    n_clusters_ : int
        Clusters used (clustered: 0 when every class is in the null cluster).
    gamma_ : float or None
        Clustered: the γ the clustering split was drawn with; None when the caller gave the split.
    clustering_fraction_ : float or None
        Clustered: realised fraction of calibration points in the clustering set (None without points).
    n_clusters_requested_, n_clusterable_, null_cluster_reason_
        Clustered: the M asked for (heuristic or ``n_clusters``), the number ``K_c`` of classes with at least
        ``⌈(1 - α)/α⌉`` clustering points, and why every class went to the null cluster (None when k-means ran).
    class_counts_ : numpy.ndarray of int, shape (L,)
        Calibration points per class (all parts).
    """

    def __init__(
        self,
        method: str = "clustered",
        alpha: float = 0.1,
        n_classes: int = 2,
        *,
        gamma: float | None = None,
        n_clusters: int | None = None,
        quantile_levels: Sequence[float] = QUANTILE_LEVELS,
        n_init: int = 10,
        random_state: int = 0,
        score: object = None,
    ) -> None:
        key = method.strip().lower() if isinstance(method, str) else None
        if key not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
        self.method = key
        self.alpha = check_alpha(alpha)
        self._alpha_raw = alpha
        self.n_classes = _check_positive_int(n_classes, "n_classes")
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes!r}")
        self.gamma = None if gamma is None else _check_gamma(gamma)
        self.n_clusters = None if n_clusters is None else _check_positive_int(n_clusters, "n_clusters")
        levels = [float(u) for u in quantile_levels]
        if not levels or any(not 0 < u <= 1 for u in levels):
            raise ValueError(f"quantile_levels must be non-empty, each in (0, 1], got {quantile_levels!r}")
        self.quantile_levels = tuple(levels)
        self.n_init = _check_positive_int(n_init, "n_init")
        self.random_state = int(random_state)
        if score is not None and isinstance(score, str):
            from ..core.scores import make_score

            score = make_score(score)
        self.score = score
        self._eps = 0.0

    # ---- inputs
    def _calibration_scores(self, scores_or_probs: object, labels: object, rng: object) -> tuple[np.ndarray, np.ndarray]:
        arr = np.asarray(scores_or_probs)
        if arr.ndim == 2:
            if self.score is None:
                raise ValueError(
                    f"scores must be 1-dimensional calibration scores, got shape {arr.shape}; "
                    "pass score='softmax'|'aps'|'raps' to the constructor to give probabilities"
                )
            if arr.shape[1] != self.n_classes:
                raise ValueError(f"probs must have n_classes={self.n_classes} columns, got shape {arr.shape}")
            y = check_labels(labels, self.n_classes)
            s = self.score.calibration_scores(arr, y, rng=rng)
            return s, y
        s = check_scores(arr, name="scores", ndim=1, allow_empty=True)
        y = check_labels(labels, self.n_classes)
        check_same_length(scores=s, labels=y)
        return s, y

    def _resolve_mask(self, labels: np.ndarray, clustering_mask: object, rng: object, gamma: float) -> np.ndarray:
        if clustering_mask is not None:
            mask = np.asarray(clustering_mask)
            if mask.shape != labels.shape or mask.dtype != np.bool_:
                raise ValueError(
                    f"clustering_mask must be a boolean array of shape {labels.shape}, got {mask.dtype} {mask.shape}"
                )
            return mask
        return split_clustering(labels, gamma, self.random_state if rng is None else rng)

    # ---- centralized fit
    def fit(
        self,
        scores: object,
        labels: object,
        clustering_mask: object = None,
        rng: object = None,
    ) -> "ClassConditionalCP":
        """Calibrate on pooled calibration data.

        Parameters
        ----------
        scores : array_like, shape (n,) or (n, L)
            Calibration scores ``s(x_i, y_i)``, or probabilities when a ``score`` was given.
        labels : array_like of int, shape (n,)
        clustering_mask : array_like of bool, shape (n,), optional
            Clustered only: True for clustering-set points (then ``gamma_`` is None: no γ was used). Default: drawn
            with probability γ from ``rng``.
        rng : None, int or numpy.random.Generator
            Randomness of the split (and of randomized scores when probabilities are given).

        Returns
        -------
        self
        """
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(
            self.random_state if rng is None else rng
        )
        s, y = self._calibration_scores(scores, labels, gen)
        L = self.n_classes
        counts = np.bincount(y, minlength=L)
        if self.method != "clustered":
            parts = {"proper": self._by_class(s, y)}
            return self._fit_parts(parts, counts, gamma=None)
        gamma = self.gamma if self.gamma is not None else clustering_heuristic(counts, self._alpha_raw)[0]
        mask = self._resolve_mask(y, clustering_mask, gen, gamma)
        parts = {"clust": self._by_class(s[mask], y[mask]), "proper": self._by_class(s[~mask], y[~mask])}
        # a caller-given mask was not drawn with γ: report no γ rather than one that was not used
        return self._fit_parts(parts, counts, gamma=None if clustering_mask is not None else gamma)

    def _by_class(self, s: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        order = np.argsort(y, kind="stable")
        bounds = np.searchsorted(y[order], np.arange(self.n_classes + 1))
        vals = [s[order[bounds[c] : bounds[c + 1]]] for c in range(self.n_classes)]
        return vals, [np.ones(v.size, dtype=np.int64) for v in vals]

    # ---- shared engine (centralized: unit weights; federated: merged digest centroids)
    def _fit_parts(
        self,
        parts: Mapping[str, tuple[list[np.ndarray], list[np.ndarray]]],
        counts: np.ndarray,
        gamma: float | None,
    ) -> "ClassConditionalCP":
        L, alpha, eps = self.n_classes, self._alpha_raw, self._eps
        need = min_points(alpha)
        pv, pw = parts["proper"]
        self.class_counts_ = np.asarray(counts, dtype=np.int64)
        self.gamma_ = gamma
        if self.method == "standard":
            thr, _ = _pool_threshold(pv, pw, alpha, eps)
            if not np.isfinite(thr):
                _warn_insufficient("pools (the whole calibration set)", [0], alpha, need)
            self.thresholds_ = np.full(L, thr)
            self.class_to_cluster_ = np.zeros(L, dtype=np.int64)
            self.cluster_thresholds_ = np.array([thr])
            self.n_clusters_ = 1
            return self
        if self.method == "classwise":
            thr = np.array([_pool_threshold([pv[c]], [pw[c]], alpha, eps)[0] for c in range(L)])
            _warn_insufficient("classes", np.flatnonzero(~np.isfinite(thr)), alpha, need)
            self.thresholds_ = thr
            self.class_to_cluster_ = np.arange(L, dtype=np.int64)
            self.cluster_thresholds_ = thr.copy()
            self.n_clusters_ = L
            return self
        # clustered
        cv, cw = parts["clust"]
        clust_counts = np.array([int(np.sum(w)) for w in cw], dtype=np.int64)
        total = int(np.sum(counts))
        self.clustering_fraction_ = float(Fraction(int(clust_counts.sum()), total)) if total else None
        nonnull = np.flatnonzero(clust_counts >= need)
        null_thr, _ = _pool_threshold(pv, pw, alpha, eps)
        if not np.isfinite(null_thr):
            _warn_insufficient("pools (the proper calibration set, null cluster)", [0], alpha, need)
        m_req = self.n_clusters if self.n_clusters is not None else clustering_heuristic(counts, alpha)[1]
        reason = null_cluster_reason(m_req, nonnull.size, need)
        m = 0 if reason is not None else m_req
        assign = np.full(L, -1, dtype=np.int64)
        if m:
            from sklearn.cluster import KMeans
            from threadpoolctl import threadpool_limits

            emb = np.stack([_step_quantiles(cv[c], cw[c], self.quantile_levels) for c in nonnull])
            # one thread: on ~100 points OpenMP start-up costs 10x the fit itself
            with warnings.catch_warnings(), threadpool_limits(1):
                warnings.simplefilter("ignore")  # fewer distinct embeddings than clusters
                km = KMeans(n_clusters=m, n_init=self.n_init, random_state=self.random_state)
                assign[nonnull] = km.fit(emb, sample_weight=np.sqrt(clust_counts[nonnull].astype(np.float64))).labels_
            self.embeddings_ = emb
        else:
            self.embeddings_ = np.empty((0, len(self.quantile_levels)))
        cluster_thr = np.empty(m)
        for j in range(m):
            members = np.flatnonzero(assign == j)
            cluster_thr[j] = _pool_threshold([pv[c] for c in members], [pw[c] for c in members], alpha, eps)[0]
        _warn_insufficient("clusters", np.flatnonzero(~np.isfinite(cluster_thr)), alpha, need)
        thr = np.full(L, null_thr)
        thr[assign >= 0] = cluster_thr[assign[assign >= 0]]
        self.thresholds_ = thr
        self.class_to_cluster_ = assign
        self.cluster_thresholds_ = cluster_thr
        self.null_threshold_ = null_thr
        self.n_clusters_ = m
        self.n_clusters_requested_ = int(m_req)
        self.n_clusterable_ = int(nonnull.size)
        self.null_cluster_reason_ = reason
        self.null_classes_ = np.flatnonzero(assign < 0)
        return self

    # ---- prediction
    def predict(self, score_matrix: object) -> np.ndarray:
        """Prediction sets ``{y : s(x, y) <= q[y]}`` as a boolean mask.

        Parameters
        ----------
        score_matrix : array_like, shape (m, L)

        Returns
        -------
        numpy.ndarray of bool, shape (m, L)
        """
        if not hasattr(self, "thresholds_"):
            raise RuntimeError("call fit before predict")
        sm = check_scores(score_matrix, name="score_matrix", ndim=2)
        if sm.shape[1] != self.n_classes:
            raise ValueError(f"score_matrix must have n_classes={self.n_classes} columns, got shape {sm.shape}")
        return sm <= self.thresholds_[None, :]

    def predict_probs(self, probs: object, rng: object = None) -> np.ndarray:
        """Prediction sets from probabilities through the constructor's ``score``."""
        if self.score is None:
            raise ValueError("score is None: construct with score='softmax'|'aps'|'raps' or call predict(score_matrix)")
        return self.predict(self.score.score_matrix(probs, rng=rng))


class FederatedClassConditionalCP(ClassConditionalCP):
    """Federated standard / classwise / clustered CP from per-class T-digests (see the module docstring).

    Parameters
    ----------
    method, alpha, n_classes, gamma, n_clusters, quantile_levels, n_init, random_state, score
        As :class:`ClassConditionalCP`.
    delta : float > 0
        T-digest compression (default 250). Coverage >= 1 - α - π/δ (see module docstring).
    conservative : bool
        Read thresholds at rank ``k + ⌈W π/δ⌉`` so that coverage >= 1 - α.
    merge : bool
        True (default): merge client digests per class with :func:`~flwr_gcfcp.core.tdigest.merge_digests` (the
        paper's protocol); False: pool the client centroids without recompression (same error bound, more memory).

    Notes
    -----
    Client side: :meth:`count_summary` (round 0, clustered with heuristic γ) and :meth:`summarize`.
    Server side: :meth:`plan` (round 0) and :meth:`fit` (a sequence of payload dicts). :meth:`predict` as usual.
    """

    def __init__(
        self,
        method: str = "clustered",
        alpha: float = 0.1,
        n_classes: int = 2,
        *,
        delta: float = 250.0,
        conservative: bool = False,
        merge: bool = True,
        **kwargs: object,
    ) -> None:
        super().__init__(method, alpha, n_classes, **kwargs)
        self.delta = check_delta(delta)
        self.conservative = bool(conservative)
        self.merge = bool(merge)

    # ---- round 0
    def count_summary(self, labels: object) -> dict[str, np.ndarray]:
        """Client: per-class counts of its calibration points (for the γ heuristic)."""
        y = check_labels(labels, self.n_classes)
        return {"class_counts": np.bincount(y, minlength=self.n_classes).astype(np.int64)}

    def plan(self, count_summaries: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Server: γ (and the heuristic M) from the summed client counts; also stored as ``gamma_planned_``."""
        counts = self._sum_counts(count_summaries)
        gamma, m = clustering_heuristic(counts, self._alpha_raw)
        if self.gamma is not None:
            gamma = self.gamma
        self.gamma_planned_ = gamma
        return {"gamma": np.array([gamma]), "n_clusters": np.array([m], dtype=np.int64)}

    def _sum_counts(self, count_summaries: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
        if len(count_summaries) == 0:
            raise ValueError("count_summaries is empty: at least one client is needed")
        total = np.zeros(self.n_classes, dtype=np.int64)
        for i, cs in enumerate(count_summaries):
            c = np.asarray(cs.get("class_counts"))
            if c.shape != (self.n_classes,) or not np.issubdtype(c.dtype, np.integer) or (c < 0).any():
                raise ValueError(f"count_summaries[{i}]['class_counts'] must be {self.n_classes} counts >= 0, got {c!r}")
            total += c
        return total

    # ---- client payload
    def summarize(
        self,
        scores: object,
        labels: object,
        clustering_mask: object = None,
        rng: object = None,
        gamma: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Client: per-class (and per-part) T-digests of the calibration scores with integer unit weights.

        Parameters
        ----------
        scores : array_like, shape (n,) or (n, L)
            Calibration scores, or probabilities when a ``score`` was given. May be empty.
        labels : array_like of int, shape (n,)
        clustering_mask : array_like of bool, optional
            Clustered only: the split; default drawn with probability γ.
        rng : None, int or Generator
        gamma : float, optional
            Clustered only: γ from the server's :meth:`plan` (else the constructor's ``gamma``, else the planned one).

        Returns
        -------
        dict of numpy arrays
            ``n_classes``, ``delta``, and for each part ``<part>/offsets`` (L + 1,), ``<part>/means``,
            ``<part>/weights`` (int64); parts ``proper`` (and ``clust`` for clustered).
        """
        from ..core.tdigest import build_digest

        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(
            self.random_state if rng is None else rng
        )
        arr = np.asarray(scores)
        if arr.size == 0:
            s = np.empty(0)
            y = check_labels(np.asarray(labels, dtype=np.int64).reshape(-1), self.n_classes)
        else:
            s, y = self._calibration_scores(scores, labels, gen)
        out: dict[str, np.ndarray] = {
            "n_classes": np.array([self.n_classes], dtype=np.int64),
            "delta": np.array([self.delta]),
        }
        if self.method == "clustered":
            g = gamma if gamma is not None else (self.gamma if self.gamma is not None else getattr(self, "gamma_planned_", None))
            if g is None and clustering_mask is None:
                raise ValueError("gamma is None: run the count round (plan) first, or pass gamma= or clustering_mask=")
            mask = self._resolve_mask(y, clustering_mask, gen, 0.0 if g is None else _check_gamma(g))
            groups = {"clust": mask, "proper": ~mask}
        else:
            groups = {"proper": np.ones(len(y), dtype=bool)}
        for part, sel in groups.items():
            vals, _ = self._by_class(s[sel], y[sel])
            offsets = [0]
            means, weights = [], []
            for v in vals:
                if v.size:
                    d = build_digest(v, None, self.delta)
                    means.append(np.asarray(d.means, dtype=np.float64))
                    weights.append(np.asarray(d.weights).astype(np.int64))
                    offsets.append(offsets[-1] + len(d.means))
                else:
                    offsets.append(offsets[-1])
            out[f"{part}/offsets"] = np.asarray(offsets, dtype=np.int64)
            out[f"{part}/means"] = np.concatenate(means) if means else np.empty(0)
            out[f"{part}/weights"] = np.concatenate(weights) if weights else np.empty(0, dtype=np.int64)
        return out

    def _check_payload(self, i: int, p: Mapping[str, np.ndarray], parts: Sequence[str]) -> None:
        L = self.n_classes
        nc = np.asarray(p.get("n_classes", [-1])).reshape(-1)
        if nc.size != 1 or int(nc[0]) != L:
            raise ValueError(f"summaries[{i}]['n_classes'] must be [{L}], got {p.get('n_classes')!r}")
        for part in parts:
            try:
                off = np.asarray(p[f"{part}/offsets"])
                means = np.asarray(p[f"{part}/means"], dtype=np.float64)
                w = np.asarray(p[f"{part}/weights"])
            except KeyError as err:
                raise ValueError(f"summaries[{i}] lacks {err.args[0]!r} (method={self.method!r})") from None
            if off.shape != (L + 1,) or off[0] != 0 or (np.diff(off) < 0).any() or off[-1] != means.size:
                raise ValueError(f"summaries[{i}]['{part}/offsets'] must be {L + 1} non-decreasing ints from 0 to {means.size}")
            if w.shape != means.shape or not np.issubdtype(w.dtype, np.integer) or (w <= 0).any():
                raise ValueError(f"summaries[{i}]['{part}/weights'] must be positive integers matching the means")
            if not np.all(np.isfinite(means)):
                raise ValueError(f"summaries[{i}]['{part}/means'] must be finite")

    # ---- server
    def fit(  # type: ignore[override]
        self, summaries: Sequence[Mapping[str, np.ndarray]], *, masks_given: bool = False
    ) -> "FederatedClassConditionalCP":
        """Server: merge the client digests per class and calibrate (see the module docstring).

        Parameters
        ----------
        summaries : sequence of dict
            One :meth:`summarize` payload per client.
        masks_given : bool
            Clustered: True when the clients split with caller-given clustering masks rather than with γ. The server
            cannot see how a client split, so ``gamma_`` is the γ the clients were given (constructor or
            :meth:`plan`) unless this says otherwise (then None). ``clustering_fraction_`` is always the realised one.

        Returns
        -------
        self
        """
        from ..core.tdigest import TDigest, merge_digests

        if len(summaries) == 0:
            raise ValueError("summaries is empty: at least one client payload is needed")
        parts = ("clust", "proper") if self.method == "clustered" else ("proper",)
        for i, p in enumerate(summaries):
            self._check_payload(i, p, parts)
        L = self.n_classes
        self._eps = _digest_error(self.delta) if self.conservative else 0.0
        merged: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        counts = np.zeros(L, dtype=np.int64)
        for part in parts:
            vals, wts = [], []
            for c in range(L):
                pieces = []
                for p in summaries:
                    off = np.asarray(p[f"{part}/offsets"])
                    a, b = int(off[c]), int(off[c + 1])
                    if b > a:
                        pieces.append(
                            (np.asarray(p[f"{part}/means"], dtype=np.float64)[a:b], np.asarray(p[f"{part}/weights"]).astype(np.int64)[a:b])
                        )
                if not pieces:
                    vals.append(np.empty(0))
                    wts.append(np.empty(0, dtype=np.int64))
                    continue
                # the conservative rank correction needs the single-digest bound sin(π/δ): pool without recompression
                if self.merge and not self.conservative and len(pieces) > 1:
                    d = merge_digests([TDigest(means=m, weights=w, delta=self.delta) for m, w in pieces], self.delta)
                    v, w = np.asarray(d.means, dtype=np.float64), np.asarray(d.weights).astype(np.int64)
                else:
                    v = np.concatenate([m for m, _ in pieces])
                    w = np.concatenate([w for _, w in pieces])
                vals.append(v)
                wts.append(w)
                counts[c] += int(w.sum())
            merged[part] = (vals, wts)
        absent = np.flatnonzero(counts == 0)
        if absent.size:
            warnings.warn(
                f"{absent.size} classes have no calibration point on any client ({', '.join(map(str, absent[:20]))}"
                f"{' ...' if absent.size > 20 else ''}): classwise gives them +inf, clustered puts them in the null "
                "cluster (standard threshold)",
                InsufficientDataWarning,
                stacklevel=2,
            )
        gamma = None
        if self.method == "clustered" and not masks_given:
            gamma = self.gamma if self.gamma is not None else getattr(self, "gamma_planned_", None)
        return self._fit_parts(merged, counts, gamma=gamma)


def fit_federated_in_process(
    model: FederatedClassConditionalCP,
    client_scores: Sequence[object],
    client_labels: Sequence[object],
    client_masks: Sequence[object] | None = None,
    rng: object = None,
) -> FederatedClassConditionalCP:
    """Run the whole federated protocol in one process (count round when needed, payloads, server fit).

    Parameters
    ----------
    model : FederatedClassConditionalCP
    client_scores, client_labels : sequences, one entry per client
    client_masks : sequence of bool arrays, optional
        Clustering masks per client (clustered); default: drawn with the planned γ.
    rng : None, int or Generator
        Randomness of the clients' splits (one generator shared in client order).
    """
    if len(client_scores) != len(client_labels):
        raise ValueError(f"client_scores and client_labels differ in length: {len(client_scores)} vs {len(client_labels)}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(model.random_state if rng is None else rng)
    gamma = None
    if model.method == "clustered" and model.gamma is None and client_masks is None:
        gamma = float(model.plan([model.count_summary(y) for y in client_labels])["gamma"][0])
    payloads = []
    for j, (s, y) in enumerate(zip(client_scores, client_labels)):
        mask = None if client_masks is None else client_masks[j]
        payloads.append(model.summarize(s, y, clustering_mask=mask, rng=gen, gamma=gamma))
    return model.fit(payloads, masks_given=client_masks is not None)
