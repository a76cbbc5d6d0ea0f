"""Calibrators with one API: client ``summarize`` -> server ``fit`` -> ``predict`` set masks.

=====================  =========  ==============================================================================
name                   private    rule
=====================  =========  ==============================================================================
``split_cp``           no         centralized split CP on pooled raw scores, ``ceil((n+1)(1-α))``-th smallest
``fedcp``              yes / no   FedCP: exact weighted rank with λ_k = π_k/(n_k+1), on merged digests (δ) or raw
``fedcp_qq``           yes        FedCP-QQ: k-th smallest of the clients' ℓ-th order statistics (one shot)
``mondrian``           no         split CP per group; a point in several groups gets the largest threshold
``condcp``             no         CondCP (Gibbs et al.): augmented quantile regression, equal weights
``centralized_gcfcp``  no         centralized GC-FCP (§4.1): same regression, weights λ_k on raw scores
``gcfcp_delta<δ>``     yes        GC-FCP (§4.2): regression on the merged per-atom T-digest coreset
=====================  =========  ==============================================================================

Group-based thresholds are computed per atom (membership pattern) by the exact engine in :mod:`.solver`;
prediction is a comparison ``score <= threshold[atom(x)]``. π_k are the mixture weights (uniform by default) and
are renormalised exactly over the clients whose summaries are used.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .groups import GroupSpec, keys_to_patterns, pattern_keys
from .quantiles import (
    client_lambdas,
    fedcp_qq_client_ranks,
    fedcp_qq_threshold,
    integer_weights,
    split_conformal_threshold,
    weighted_conformal_threshold,
)
from .solver import AtomSolver
from .summaries import DigestSummary, PayloadError, QQSummary, RawSummary, summarize_digests
from .tdigest import TDigest, merge_digests
from .validation import InsufficientDataWarning, alpha_fraction, check_delta, check_scores, exact_fraction

__all__ = [
    "Calibrator",
    "DegenerateAtomsWarning",
    "CentralizedGCFCP",
    "CondCP",
    "FedCP",
    "FedCPQQ",
    "FitReport",
    "GCFCP",
    "MondrianCP",
    "SplitCP",
    "client_payload",
    "fit_all",
    "fit_in_process",
    "make_calibrators",
    "predictor_arrays",
    "thresholds_from_arrays",
]


def _pi_fractions(pi: Sequence[object] | None, n_clients: int) -> list[Fraction] | None:
    if pi is None:
        return None
    vals = [exact_fraction(p, f"pi[{i}]") for i, p in enumerate(pi)]
    if len(vals) != n_clients:
        raise ValueError(f"pi must have one entry per client ({n_clients}), got {len(vals)}")
    return vals


def _repeat_weights(weights: Sequence[int], counts: Sequence[int]) -> np.ndarray:
    """Per-point exact integer weights: int64 when the total fits, Python ints otherwise."""
    total = sum(int(w) * int(c) for w, c in zip(weights, counts))
    dtype = np.int64 if total < 2**62 else object
    return np.concatenate([np.full(int(c), int(w), dtype=dtype) for w, c in zip(weights, counts)])


def _client_integer_weights(ns: Sequence[int], pi: Sequence[object] | None) -> tuple[list[int], int]:
    """Exact integer λ_k on a common scale, and the test weight Σ_k λ_k on that scale."""
    lams = client_lambdas(list(ns), _pi_fractions(pi, len(ns)))
    _, ints = integer_weights(lams)
    return ints, sum(ints)


class Calibrator:
    """Base class. Subclasses set ``summary_kind`` and implement ``summarize`` and ``_fit``."""

    name: str = "calibrator"
    private: bool = True
    summary_kind: str = ""
    summary_type: type = RawSummary
    #: extra client inputs ``summarize`` accepts as keywords (``labels``, ``probs``, ``rng``); see client_payload
    extra_inputs: tuple[str, ...] = ()

    def __init__(self, alpha: float, groups: GroupSpec | None = None) -> None:
        self.alpha = alpha_fraction(alpha)
        self.groups = groups
        self._constant: float | None = None
        self._by_key: dict[int, float] = {}
        self._solver: AtomSolver | None = None
        self._coreset: tuple | None = None
        self.fit_seconds: float | None = None
        self.n_clients_used: int | None = None

    # ------------------------------------------------------------------ client side
    def atom_keys(self, features: object, n: int) -> np.ndarray:
        if self.groups is None:
            return np.zeros(n, dtype=np.int64)
        keys = pattern_keys(self.groups.membership(features))
        if keys.size != n:
            raise ValueError(f"features describe {keys.size} points but there are {n} scores")
        return keys

    def summarize(self, scores, features=None, pi_k: float | None = None, n_clients: int | None = None):
        """Client side: turn local calibration scores into what the client sends."""
        raise NotImplementedError

    # ------------------------------------------------------------------ server side
    def fit(self, summaries: Sequence[object], pi: Sequence[object] | None = None) -> "Calibrator":
        """Server side: fit on the clients' summaries (π renormalised over them; uniform by default)."""
        summaries = list(summaries)
        if not summaries:
            raise ValueError("summaries is empty: at least one client summary is needed")
        if pi is not None and len(pi) != len(summaries):
            raise ValueError(f"pi must have one entry per summary ({len(summaries)}), got {len(pi)}")
        start = time.perf_counter()
        self._by_key, self._constant, self._solver, self._coreset = {}, None, None, None
        self._fit(summaries, pi)
        if self._solver is not None and self.groups is not None:
            patterns = self.groups.all_patterns()
            if patterns is not None:
                for key, pat in zip(pattern_keys(patterns).tolist(), patterns):
                    self._by_key[key] = self._solver.threshold(pat)
        self.fit_seconds = time.perf_counter() - start
        self.n_clients_used = len(summaries)
        return self

    def _fit(self, summaries: list, pi: Sequence[object] | None) -> None:
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if self._constant is None and not self._by_key and self._solver is None:
            raise RuntimeError(f"{self.name} is not fitted: call fit() first")

    # ------------------------------------------------------------------ prediction
    def threshold_for_keys(self, keys: np.ndarray) -> np.ndarray:
        """Per-point thresholds for atom keys (unseen atoms are solved lazily and cached)."""
        self._check_fitted()
        keys = np.asarray(keys, dtype=np.int64)
        if self._constant is not None:
            return np.full(keys.shape, self._constant)
        uniq, inverse = np.unique(keys, return_inverse=True)
        vals = np.empty(uniq.size)
        for i, key in enumerate(uniq.tolist()):
            if key not in self._by_key:
                if self._solver is None:
                    raise ValueError(f"{self.name}: no threshold for atom key {key} (a pattern not seen in calibration)")
                pattern = keys_to_patterns([key], self.groups.n_groups)[0]
                self._by_key[key] = self._solver.threshold(pattern)
            vals[i] = self._by_key[key]
        return vals[inverse]

    def thresholds_for(self, features: object, n: int | None = None) -> np.ndarray:
        """Per-point thresholds for the points described by ``features`` (``n`` points when there are no groups)."""
        if self.groups is None:
            if n is None and features is None:
                raise ValueError(f"{self.name}: give n (the number of points) or features")
            count = int(n if n is not None else len(features))
            return self.threshold_for_keys(np.zeros(count, dtype=np.int64))
        if features is None:
            raise ValueError(f"{self.name}: features are needed to place points in groups ({self.groups.to_text()!r})")
        thr = self.threshold_for_keys(pattern_keys(self.groups.membership(features)))
        if n is not None and thr.shape[0] != n:
            raise ValueError(f"features describe {thr.shape[0]} points but score_matrix has {n} rows")
        return thr

    def predict(self, score_matrix: np.ndarray, features: object = None, probs: object = None) -> np.ndarray:
        """Boolean (n, L) prediction-set mask ``score <= threshold`` (``probs`` is used by set-valued methods only)."""
        scores = check_scores(score_matrix, name="score_matrix", ndim=2)
        thr = self.thresholds_for(features, n=scores.shape[0])
        return scores <= thr[:, None]

    @property
    def thresholds(self) -> dict[int, float]:
        """Threshold per atom key (``{0: t}`` for a single marginal threshold)."""
        self._check_fitted()
        return {0: self._constant} if self._constant is not None else dict(self._by_key)

    def predictor(self) -> dict:
        """JSON-serialisable calibrated predictor (see :class:`.predictor.Predictor`, which loads it back)."""
        from .predictor import Predictor

        self._check_fitted()
        return Predictor.from_calibrator(self).to_dict()

    def _summary(self, arrays_or_obj):
        return arrays_or_obj


# ---------------------------------------------------------------------- marginal methods
class SplitCP(Calibrator):
    """Centralized split CP on pooled raw scores (the paper's "centralized CP"). Not private."""

    name, private, summary_kind, summary_type = "split_cp", False, "raw", RawSummary

    def __init__(self, alpha: float) -> None:
        super().__init__(alpha, None)

    def summarize(self, scores, features=None, pi_k=None, n_clients=None) -> RawSummary:
        s = check_scores(scores, allow_empty=True)
        return RawSummary(scores=s, atom_keys=np.zeros(s.size, dtype=np.int64))

    def _fit(self, summaries, pi) -> None:
        pooled = np.concatenate([s.scores for s in summaries])
        self._constant = split_conformal_threshold(pooled, self.alpha)


class FedCP(Calibrator):
    """FedCP (Lu et al. 2023) with the exact weighted rank.

    With ``delta`` the clients send one T-digest of their scores (private); the server merges them and evaluates
    ``min{s : Σ_k λ_k #{S_ik <= s} >= 1 - α}`` on the merged clusters with exact integer weights. With
    ``delta=None`` the rule is applied to the raw scores (not private).
    """

    def __init__(self, alpha: float, delta: float | None = None, merge: bool = True) -> None:
        super().__init__(alpha, None)
        self.delta = None if delta is None else check_delta(delta)
        self.merge = merge
        self.private = delta is not None
        self.summary_kind = "raw" if delta is None else f"whole{self.delta:g}"
        self.summary_type = RawSummary if delta is None else DigestSummary
        self.name = "fedcp" if delta is None or delta == 250 else f"fedcp_delta{self.delta:g}"

    def summarize(self, scores, features=None, pi_k=None, n_clients=None):
        s = check_scores(scores, allow_empty=True)
        keys = np.zeros(s.size, dtype=np.int64)
        if self.delta is None:
            return RawSummary(scores=s, atom_keys=keys)
        return summarize_digests(s, keys, self.delta, _lam(pi_k, n_clients, s.size))

    def _fit(self, summaries, pi) -> None:
        ns = [s.n for s in summaries]
        lam_ints, test_w = _client_integer_weights(ns, pi)
        if self.delta is None:
            values = np.concatenate([s.scores for s in summaries])
            weights = _repeat_weights(lam_ints, ns)
        else:
            digests = [
                TDigest(means=s.means, weights=s.counts.astype(object) * w, delta=s.delta)
                for s, w in zip(summaries, lam_ints)
                if s.counts.size
            ]
            if not digests:
                values, weights = np.zeros(0), np.zeros(0, dtype=object)
            else:
                merged = merge_digests(digests, self.delta) if self.merge else _union(digests)
                values, weights = merged.means, merged.weights
        total = sum(w * (n + 1) for w, n in zip(lam_ints, ns))
        self._constant = weighted_conformal_threshold(values, weights, self.alpha, total)


def _union(digests: Sequence[TDigest]) -> TDigest:
    means = np.concatenate([d.means for d in digests])
    weights = np.concatenate([d.weights.astype(object) for d in digests])
    order = np.argsort(means, kind="stable")
    return TDigest(means=means[order], weights=weights[order], delta=min(d.delta for d in digests))


_PI_UPPER = Fraction(314159265358979324, 10**17)  # > π


def _lam(pi_k: float | None, n_clients: int | None, n: int) -> float:
    """λ_k = π_k / (n_k + 1) as sent by a client (π_k defaults to 1/K, or 1 when K is unknown)."""
    if pi_k is None:
        pi_k = 1.0 / n_clients if n_clients else 1.0
    if not pi_k > 0:
        raise ValueError(f"pi_k must be > 0, got {pi_k!r}")
    return float(pi_k) / (n + 1)


class FedCPQQ(Calibrator):
    """FedCP-QQ (Humbert et al. 2023): one shot, each client sends a few top order statistics.

    Client j sends its largest ``top`` scores; the server picks (k, ℓ) for the smallest client size
    (:func:`quantiles.fedcp_qq_client_ranks`) and returns the k-th smallest of the clients' rank statistics.
    """

    name, private, summary_kind, summary_type = "fedcp_qq", True, "qq", QQSummary

    def __init__(self, alpha: float, n_clients: int | None = None) -> None:
        super().__init__(alpha, None)
        self.n_clients = n_clients

    def summarize(self, scores, features=None, pi_k=None, n_clients=None) -> QQSummary:
        s = np.sort(check_scores(scores, allow_empty=True))[::-1]
        m = n_clients or self.n_clients or 1
        try:
            _, ranks = fedcp_qq_client_ranks([max(s.size, 1)] * m, self.alpha)
            keep = s.size - ranks[0] + 1  # the client's own rank from the top, for the equal-size case
        except ValueError:
            keep = s.size
        # send a margin so that a smaller smallest-client still finds its rank: up to twice the own rank from the top
        keep = int(min(s.size, max(1, 2 * keep)))
        return QQSummary(n=int(s.size), top=s[:keep].copy())

    def _fit(self, summaries, pi) -> None:
        ns = [s.n for s in summaries if s.n > 0]
        if not ns:
            raise ValueError("fedcp_qq: every client has 0 calibration points")
        try:
            k, ranks = fedcp_qq_client_ranks(ns, self.alpha)
        except ValueError as err:
            warnings.warn(f"fedcp_qq: {err}; threshold is +inf", InsufficientDataWarning, stacklevel=3)
            self._constant = math.inf
            return
        stats = []
        for s, rank in zip([s for s in summaries if s.n > 0], ranks):
            from_top = s.n - rank  # 0-based index in the decreasing list
            if from_top >= s.top.size:
                raise PayloadError(f"fedcp_qq: client sent {s.top.size} order statistics, rank {from_top + 1} from the top is needed")
            stats.append(s.top[from_top])
        self._constant = fedcp_qq_threshold(np.asarray(stats), k)


# ---------------------------------------------------------------------- group methods
class MondrianCP(Calibrator):
    """Group-wise (Mondrian) split CP on pooled raw scores; overlapping groups take the largest threshold.

    The maximum keeps coverage >= 1 - α in every group (a point's set contains its own group's set). Not private.
    """

    name, private, summary_kind, summary_type = "mondrian", False, "raw", RawSummary

    def __init__(self, groups: GroupSpec, alpha: float) -> None:
        super().__init__(alpha, groups)

    def summarize(self, scores, features=None, pi_k=None, n_clients=None) -> RawSummary:
        s = check_scores(scores, allow_empty=True)
        return RawSummary(scores=s, atom_keys=self.atom_keys(features, s.size))

    def _fit(self, summaries, pi) -> None:
        scores = np.concatenate([s.scores for s in summaries])
        keys = np.concatenate([s.atom_keys for s in summaries])
        member = keys_to_patterns(keys, self.groups.n_groups) if keys.size else np.zeros((0, self.groups.n_groups), bool)
        self.group_thresholds = np.array(
            [split_conformal_threshold(scores[member[:, g]], self.alpha) if member[:, g].any() else math.inf for g in range(self.groups.n_groups)]
        )
        patterns = self.groups.all_patterns()
        if patterns is None:
            patterns = keys_to_patterns(np.unique(keys), self.groups.n_groups)
        for key, pat in zip(pattern_keys(patterns).tolist(), patterns):
            self._by_key[key] = float(self.group_thresholds[pat].max()) if pat.any() else math.inf

    def threshold_for_keys(self, keys):
        keys = np.asarray(keys, dtype=np.int64)
        missing = [k for k in np.unique(keys).tolist() if k not in self._by_key]
        for key in missing:
            pat = keys_to_patterns([key], self.groups.n_groups)[0]
            self._by_key[key] = float(self.group_thresholds[pat].max()) if pat.any() else math.inf
        return super().threshold_for_keys(keys)


class _RegressionCalibrator(Calibrator):
    """Shared engine: the weighted augmented quantile regression over group indicators."""

    def __init__(self, groups: GroupSpec, alpha: float) -> None:
        if groups is None:
            raise ValueError("groups must be given for a group-conditional method")
        super().__init__(alpha, groups)

    def _solve_on(self, values, weights, keys, test_weight) -> None:
        uniq, index = np.unique(np.asarray(keys, dtype=np.int64), return_inverse=True)
        patterns = keys_to_patterns(uniq, self.groups.n_groups)
        if np.asarray(values).size == 0:
            raise ValueError(f"{self.name}: no calibration scores from any client")
        _warn_small_atoms(self.name, keys, self.alpha)  # before solving: a degenerate family can be slow
        self._solver = AtomSolver(values, weights, index, patterns, self.alpha, test_weight)
        self._coreset = (values, weights, keys, test_weight)  # kept for the saved predictor
        for key, pat in zip(uniq.tolist(), patterns):
            self._by_key[key] = self._solver.threshold(pat)


class DegenerateAtomsWarning(UserWarning):
    """Most calibration points sit in atoms of their own: per-atom thresholds and digests lose their advantage."""


def _warn_small_atoms(name: str, keys: np.ndarray, alpha: Fraction) -> None:
    need = math.ceil((1 - alpha) / alpha)
    uniq, counts = np.unique(keys, return_counts=True)
    if uniq.size >= 50 and uniq.size > keys.size / 4:
        warnings.warn(
            f"{name}: {uniq.size} distinct membership patterns for {keys.size} calibration points/clusters: the groups "
            "split the data into nearly one atom per point (e.g. groups on many independent attributes), so per-atom "
            "thresholds approach per-point solves and digests compress little; consider fewer or nested groups",
            DegenerateAtomsWarning,
            stacklevel=4,
        )
    small = uniq[counts < need]
    if small.size:
        warnings.warn(
            f"{name}: {small.size} atom(s) hold fewer than (1 - α)/α = {need} calibration points "
            f"(keys {small.tolist()[:5]}); their thresholds may be +inf or loose",
            InsufficientDataWarning,
            stacklevel=4,
        )


class CondCP(_RegressionCalibrator):
    """CondCP (Gibbs et al.): the augmented quantile regression with equal weights on pooled raw scores."""

    name, private, summary_kind, summary_type = "condcp", False, "raw", RawSummary

    def summarize(self, scores, features=None, pi_k=None, n_clients=None) -> RawSummary:
        s = check_scores(scores, allow_empty=True)
        return RawSummary(scores=s, atom_keys=self.atom_keys(features, s.size))

    def _fit(self, summaries, pi) -> None:
        values = np.concatenate([s.scores for s in summaries])
        keys = np.concatenate([s.atom_keys for s in summaries])
        self._solve_on(values, np.ones(values.size, dtype=np.int64), keys, 1)


class CentralizedGCFCP(CondCP):
    """Centralized GC-FCP (§4.1): raw scores weighted by λ_k = π_k/(n_k + 1). Not private."""

    name = "centralized_gcfcp"

    def _fit(self, summaries, pi) -> None:
        lam_ints, test_w = _client_integer_weights([s.n for s in summaries], pi)
        values = np.concatenate([s.scores for s in summaries])
        keys = np.concatenate([s.atom_keys for s in summaries])
        weights = _repeat_weights(lam_ints, [s.n for s in summaries])
        self._solve_on(values, weights, keys, test_w)


class GCFCP(_RegressionCalibrator):
    """GC-FCP (Algorithm 1): per-atom T-digests at the clients, merged per atom at the server, exact regression.

    Guarantee (Thm 5.1): coverage >= 1 - α - π/δ in every group. ``conservative=True`` calibrates at level
    1 - α + π/δ (α' = α - π/δ) so the guarantee becomes >= 1 - α. ``merge=False`` keeps the union of the
    client digests instead of re-compressing them (more accurate, larger coreset).
    """

    private, summary_type = True, DigestSummary

    def __init__(self, groups: GroupSpec, alpha: float, delta: float = 250, conservative: bool = False, merge: bool = True) -> None:
        super().__init__(groups, alpha)
        self.delta = check_delta(delta)
        self.conservative = conservative
        self.merge = merge
        self.nominal_alpha = self.alpha
        if conservative:
            # α' = α - π/δ, rounded down on a 1e-12 grid with an upper bound of π, so the level is never lower
            corrected = self.alpha - _PI_UPPER / Fraction(repr(self.delta))
            if corrected <= 0:
                raise ValueError(
                    f"conservative GC-FCP needs alpha > pi/delta; got alpha={float(self.alpha)}, delta={self.delta:g} "
                    f"(pi/delta = {math.pi / self.delta:.4f})"
                )
            self.alpha = Fraction(math.floor(corrected * 10**12), 10**12)
        self.summary_kind = f"digest{self.delta:g}"
        self.name = f"gcfcp_delta{self.delta:g}" + ("_conservative" if conservative else "")

    def summarize(self, scores, features=None, pi_k=None, n_clients=None) -> DigestSummary:
        s = check_scores(scores, allow_empty=True)
        return summarize_digests(s, self.atom_keys(features, s.size), self.delta, _lam(pi_k, n_clients, s.size))

    def _fit(self, summaries, pi) -> None:
        lam_ints, test_w = _client_integer_weights([s.n for s in summaries], pi)
        per_atom: dict[int, list[TDigest]] = {}
        for s, w in zip(summaries, lam_ints):
            for key, means, counts in s.atom_blocks():
                per_atom.setdefault(key, []).append(TDigest(means=means, weights=counts.astype(object) * w, delta=s.delta))
        values, weights, keys = [], [], []
        self.coreset_size = 0
        for key, digests in sorted(per_atom.items()):
            merged = merge_digests(digests, self.delta) if self.merge else _union(digests)
            values.append(merged.means)
            weights.append(merged.weights.astype(object))
            keys.append(np.full(merged.n_clusters, key, dtype=np.int64))
            self.coreset_size += merged.n_clusters
        self._solve_on(np.concatenate(values), np.concatenate(weights), np.concatenate(keys), test_w)


# ---------------------------------------------------------------------- the multi-method round
METHODS = ("split_cp", "fedcp", "fedcp_raw", "fedcp_qq", "mondrian", "condcp", "centralized_gcfcp", "gcfcp")


def make_calibrators(
    methods: Sequence[str],
    groups: GroupSpec | None,
    alpha: float,
    deltas: Sequence[float] = (250,),
    conservative: bool = False,
    n_classes: int | None = None,
) -> dict[str, Calibrator]:
    """Build the calibrators named in ``methods`` (see module docstring); ``gcfcp`` expands over ``deltas``.

    ``fedcp`` uses digests at the first δ (private). ``conservative=True`` adds the π/δ-corrected GC-FCP variants.
    The class-conditional (``standard``, ``classwise``, ``clustered``) and set-valued (``topk:K``, ``pointwise``,
    ``penalized:LAM``, ``avg_size:KBAR``, ``avg_error``, ``fbeta``, ``hybrid:K:KBAR``) methods are built by
    :func:`flwr_gcfcp.classcond_calibrators.make_extra_calibrator` (syntax there); ``n_classes`` (default: the
    label count of label-set groups) lets their parameters be checked against L up front.
    """
    from .classcond_calibrators import EXTRA_SYNTAX, make_extra_calibrator

    if n_classes is None:
        n_classes = getattr(groups, "n_labels", None)
    out: dict[str, Calibrator] = {}
    deltas = [check_delta(d, "deltas") for d in deltas]
    if not deltas:
        raise ValueError("deltas must contain at least one value")
    for method in methods:
        method = method.strip()
        if method == "split_cp":
            cals = [SplitCP(alpha)]
        elif method == "fedcp":
            cal = FedCP(alpha, deltas[0])
            cal.name = "fedcp"
            cals = [cal]
        elif method == "fedcp_raw":
            cals = [FedCP(alpha, None)]
            cals[0].name = "fedcp_raw"
        elif method == "fedcp_qq":
            cals = [FedCPQQ(alpha)]
        elif method in ("mondrian", "condcp", "centralized_gcfcp", "gcfcp"):
            if groups is None:
                raise ValueError(f"method {method!r} needs groups")
            if method == "mondrian":
                cals = [MondrianCP(groups, alpha)]
            elif method == "condcp":
                cals = [CondCP(groups, alpha)]
            elif method == "centralized_gcfcp":
                cals = [CentralizedGCFCP(groups, alpha)]
            else:
                cals = [GCFCP(groups, alpha, d) for d in deltas]
                if conservative:
                    cals += [GCFCP(groups, alpha, d, conservative=True) for d in deltas if math.pi / d < float(alpha)]
        else:
            extra = make_extra_calibrator(method, alpha, deltas, n_classes)
            if extra is None:
                raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}, {EXTRA_SYNTAX}")
            cals = [extra]
        for cal in cals:
            out[cal.name] = cal
    if not out:
        raise ValueError("methods is empty: name at least one method")
    return out


def client_payload(
    calibrators: Mapping[str, Calibrator],
    scores,
    features,
    pi_k: float | None = None,
    n_clients: int | None = None,
    *,
    labels=None,
    probs=None,
    rng=None,
) -> dict[str, np.ndarray]:
    """Client side of a shared calibration round: one block of arrays per summary kind (deduplicated).

    ``labels`` (true labels of the calibration points), ``probs`` (their probability rows) and ``rng`` (seed or
    generator of client-side randomness, e.g. the clustered split) go to the calibrators that declare them in
    ``extra_inputs`` (class-conditional and set-valued methods); the others ignore them.
    """
    extras = {"labels": labels, "probs": probs, "rng": rng}
    out: dict[str, np.ndarray] = {}
    done: set[str] = set()
    # a shared block must carry atom keys when any method using it has groups: summarize with those first
    for cal in sorted(calibrators.values(), key=lambda c: c.groups is None):
        if cal.summary_kind in done:
            continue
        done.add(cal.summary_kind)
        kw = {k: extras[k] for k in cal.extra_inputs}
        summary = cal.summarize(scores, features, pi_k=pi_k, n_clients=n_clients, **kw)
        arrays = summary.to_arrays() if hasattr(summary, "to_arrays") else summary
        for key, arr in arrays.items():
            out[f"{cal.summary_kind}/{key}"] = arr
    return out


def payload_bytes(payload: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Bytes per summary kind in a client payload."""
    sizes: dict[str, int] = {}
    for key, arr in payload.items():
        kind = key.split("/", 1)[0]
        sizes[kind] = sizes.get(kind, 0) + int(np.asarray(arr).nbytes)
    return sizes


@dataclass
class FitReport:
    """Outcome of :func:`fit_all`."""

    calibrators: dict[str, Calibrator]
    used: list[str]
    excluded: dict[str, str] = field(default_factory=dict)
    failed_methods: dict[str, str] = field(default_factory=dict)
    pi: dict[str, float] = field(default_factory=dict)


def _parse_payload(cal: Calibrator, payload: Mapping[str, np.ndarray]):
    prefix = cal.summary_kind + "/"
    block = {k[len(prefix) :]: v for k, v in payload.items() if k.startswith(prefix)}
    if not block:
        raise PayloadError(f"no '{cal.summary_kind}' block (needed by {cal.name})")
    if hasattr(cal, "parse_summary"):  # adapters validate their own blocks
        return cal.parse_summary(block)
    max_key = 2 ** cal.groups.n_groups if cal.groups is not None else None
    return cal.summary_type.from_arrays(block, max_key=max_key)


def fit_all(
    calibrators: Mapping[str, Calibrator],
    payloads: Mapping[str, Mapping[str, np.ndarray]],
    pi: Mapping[str, float] | None = None,
) -> FitReport:
    """Server side: validate each client's payload, exclude malformed ones, renormalise π, fit every calibrator.

    Parameters
    ----------
    calibrators : mapping name -> Calibrator
    payloads : mapping client id -> arrays from :func:`client_payload`
    pi : mapping client id -> mixture weight, or None for uniform over the clients used

    Returns
    -------
    FitReport
        ``excluded`` names each dropped client and the reason; π is renormalised over ``used``.
    """
    parsed: dict[str, dict[str, object]] = {}
    excluded: dict[str, str] = {}
    for cid, payload in payloads.items():
        try:
            parsed[cid] = {name: _parse_payload(cal, payload) for name, cal in calibrators.items()}
            ns = {getattr(s, "n", None) for s in parsed[cid].values()}
            if len(ns) > 1:
                raise PayloadError(f"summaries disagree on the number of calibration points: {sorted(ns)}")
        except PayloadError as err:
            excluded[cid] = f"malformed payload: {err}"
            parsed.pop(cid, None)
    used = list(parsed)
    if pi is not None:
        missing = [c for c in used if c not in pi]
        if missing:
            raise ValueError(f"pi has no weight for clients {missing}")
        bad = {c: pi[c] for c in used if not (float(pi[c]) >= 0 and math.isfinite(float(pi[c])))}
        if bad:
            raise ValueError(f"pi must be finite and >= 0, got {bad}")
    pis = None if pi is None else [pi[c] for c in used]
    report = FitReport(calibrators=dict(calibrators), used=used, excluded=excluded)
    if used:
        if pis is None:
            report.pi = {c: 1.0 / len(used) for c in used}
        else:
            total = sum(exact_fraction(p) for p in pis)
            report.pi = {c: float(exact_fraction(p) / total) for c, p in zip(used, pis)}
    if not used:
        return report
    for name, cal in calibrators.items():
        try:
            cal.fit([parsed[c][name] for c in used], pis)
        except (ValueError, PayloadError) as err:
            report.failed_methods[name] = str(err)
    return report


def fit_in_process(
    calibrator: Calibrator, client_scores: Sequence[np.ndarray], client_features: Sequence[object] | None = None, pi=None
) -> Calibrator:
    """Summarize each client's scores as a client would, then fit: the federated computation in one process."""
    k = len(client_scores)
    feats = client_features if client_features is not None else [None] * k
    pis = [None] * k if pi is None else [float(p) / float(sum(pi)) for p in pi]
    summaries = [calibrator.summarize(s, f, pi_k=p, n_clients=k) for s, f, p in zip(client_scores, feats, pis)]
    return calibrator.fit(summaries, pi)


def predictor_arrays(calibrator: Calibrator) -> dict[str, np.ndarray]:
    """Per-atom thresholds as arrays (sent to clients in the conformal evaluation round).

    Class-conditional and set-valued calibrators give their own arrays (per-label thresholds, or the set-valued
    rule), with a ``rule`` entry; clients apply any of them with
    :func:`flwr_gcfcp.classcond_calibrators.set_mask_from_arrays`.
    """
    if hasattr(calibrator, "predictor_arrays"):
        return calibrator.predictor_arrays()
    thr = calibrator.thresholds
    keys = np.asarray(list(thr.keys()), dtype=np.int64)
    return {
        "keys": keys,
        "thresholds": np.asarray([thr[k] for k in keys.tolist()], dtype=np.float64),
        "constant": np.array([calibrator._constant is not None], dtype=np.int64),
    }


def thresholds_from_arrays(arrays: Mapping[str, np.ndarray], features, groups: GroupSpec | None, n: int | None = None) -> np.ndarray:
    """Client side of the evaluation round: per-point thresholds from :func:`predictor_arrays`.

    A pattern absent from the arrays (possible only for non-enumerable group families) gets ``+inf`` (full set)
    with a warning.
    """
    if int(np.asarray(arrays.get("rule", [0])).reshape(-1)[0]) != 0:
        raise PayloadError(
            "these predictor arrays hold per-label thresholds or a set-valued rule, not per-point thresholds: "
            "use classcond_calibrators.set_mask_from_arrays"
        )
    keys_arr = np.asarray(arrays["keys"], dtype=np.int64)
    thr = np.asarray(arrays["thresholds"], dtype=np.float64)
    if keys_arr.shape != thr.shape:
        raise PayloadError(f"keys and thresholds differ in shape: {keys_arr.shape} vs {thr.shape}")
    if int(np.asarray(arrays.get("constant", [0]))[0]) == 1 or groups is None:
        count = n if n is not None else len(features)
        return np.full(int(count), float(thr[0]))
    keys = pattern_keys(groups.membership(features))
    lookup = dict(zip(keys_arr.tolist(), thr.tolist()))
    out = np.array([lookup.get(k, math.inf) for k in keys.tolist()], dtype=np.float64)
    unknown = sum(1 for k in set(keys.tolist()) if k not in lookup)
    if unknown:
        warnings.warn(f"{unknown} atom pattern(s) without a threshold: full sets there", InsufficientDataWarning, stacklevel=2)
    return out
