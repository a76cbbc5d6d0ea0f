"""Byzantine-robust calibration: screen clients by score distribution, then certify by leave-M-out fits.

``byzantine_clients = M`` tolerates up to M clients that send arbitrary well-formed summaries. Two steps
(see ``docs/robustness.md`` for the guarantee and its proof):

1. **Screening** (:func:`screen_clients`). Each client's summary gives an estimate of its score CDF (raw scores,
   the cluster counts of its digests, or its per-class digests pooled). The server computes the pairwise
   Kolmogorov-Smirnov distances, subtracts what sampling (two-sample DKW bound at ``confidence``) and digest
   compression (``sin(π/δ)`` per digest) can explain, and scores each client by its distance to its
   ``(K - M - 1)``-th nearest client (a benign client has at least ``K - M - 1`` benign peers). A client whose
   score exceeds ``tolerance`` is flagged and left out; exact copies of another client's summaries are flagged
   too (one copy kept). At most M clients are flagged, f of them, most distant first. This removes gross attacks
   in either direction (all scores 0, all scores 1, noise, copies), so that step 2 does not pay for them in set size.
2. **Certification** (:func:`fit_certified`). Over the K - f unflagged clients, fit the method on every subset
   that leaves out ``M - f`` of them (``C(K - f, M - f)`` fits, each an ordinary fit with π renormalised over the
   subset) and keep, per atom (per class for class-conditional methods, the single threshold for marginal ones),
   the largest threshold. When at most ``M - f`` attackers remain unflagged (in particular whenever every flagged
   client is an attacker, which the screening guarantees when benign clients are within ``tolerance`` of each
   other), one subset holds no attacker and the benign subsets average to the benign mixture, so the sets cover
   the benign mixture with the method's own guarantee, whatever the attackers send.

``M = 0`` is the ordinary fit: no screening, one subset (every client).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np

from ..core.summaries import DigestSummary, RawSummary
from .base import Calibrator

__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_TOLERANCE",
    "MAX_SUBSET_FITS",
    "check_byzantine_clients",
    "fit_certified",
    "score_distances",
    "screen_clients",
]

#: KS distance, beyond sampling and digest error, that two benign clients' score distributions may differ by.
DEFAULT_TOLERANCE = 0.25
#: Probability that the DKW sampling allowance covers two benign clients drawn from one distribution.
DEFAULT_CONFIDENCE = 0.99
#: Largest number of subset fits one robust fit may cost (``C(K, M)`` per method).
MAX_SUBSET_FITS = 5000


def check_byzantine_clients(byzantine_clients: object, n_clients: int) -> int:
    """Validate ``byzantine_clients`` against the number of clients that sent a payload.

    Raises
    ------
    ValueError
        Not an integer, negative, not below ``n_clients`` (nothing could be certified), or needing more than
        :data:`MAX_SUBSET_FITS` subset fits.
    """
    if isinstance(byzantine_clients, bool) or not isinstance(byzantine_clients, (int, np.integer)):
        raise ValueError(f"byzantine_clients must be an integer >= 0, got {byzantine_clients!r}")
    m = int(byzantine_clients)
    if m < 0:
        raise ValueError(f"byzantine_clients must be >= 0, got {m}")
    if m == 0:
        return 0
    if m >= n_clients:
        raise ValueError(
            f"byzantine_clients={m} must be smaller than the number of clients ({n_clients}): "
            "at least one client must remain trusted"
        )
    fits = math.comb(n_clients, m)
    if fits > MAX_SUBSET_FITS:
        raise ValueError(
            f"byzantine_clients={m} with {n_clients} clients needs C({n_clients}, {m}) = {fits} fits per method "
            f"(limit {MAX_SUBSET_FITS}); lower byzantine_clients"
        )
    return m


# ------------------------------------------------------------------------------------------------ screening
def _score_cdf(cal: Calibrator, summary: object) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(values, counts, CDF error bound) of a client's calibration scores, or None if the summary hides them."""
    from .adapters import ClassConditionalCalibrator

    if isinstance(summary, RawSummary):
        return summary.scores, np.ones(summary.scores.size), 0.0
    if isinstance(summary, DigestSummary):
        # the server's δ, not the client's claim: a coarser digest is the validator's business
        return summary.means, summary.counts.astype(np.float64), math.sin(math.pi / cal.delta)
    if isinstance(cal, ClassConditionalCalibrator):
        parts = ("clust", "proper") if cal.method == "clustered" else ("proper",)
        values = np.concatenate([np.asarray(summary[f"{p}/means"], dtype=np.float64) for p in parts])
        counts = np.concatenate([np.asarray(summary[f"{p}/weights"]).astype(np.float64) for p in parts])
        return values, counts, math.sin(math.pi / cal.delta)
    return None


def _ks(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Kolmogorov-Smirnov distance between two weighted step CDFs (right-continuous at the values)."""
    grid = np.union1d(a[0], b[0])
    return float(np.max(np.abs(_cdf_at(a, grid) - _cdf_at(b, grid)))) if grid.size else 0.0


def _cdf_at(sample: tuple[np.ndarray, np.ndarray], grid: np.ndarray) -> np.ndarray:
    values, counts = sample
    order = np.argsort(values, kind="stable")
    v, c = values[order], np.cumsum(counts[order])
    idx = np.searchsorted(v, grid, side="right")
    return np.where(idx > 0, c[np.maximum(idx - 1, 0)], 0.0) / c[-1]


def score_distances(
    calibrators: Mapping[str, Calibrator],
    summaries: Mapping[str, Mapping[str, object]],
    confidence: float = DEFAULT_CONFIDENCE,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Pairwise score-distribution distances between clients.

    Parameters
    ----------
    calibrators : mapping name -> Calibrator
    summaries : mapping client id -> {calibrator name -> parsed summary}
    confidence : float in (0, 1)
        Level of the two-sample DKW allowance ``sqrt(log(4/(1 - confidence))/2) (1/sqrt(n_j) + 1/sqrt(n_k))``.

    Returns
    -------
    ids : list of client ids (row order)
    ks : (K, K) float
        Largest KS distance over the summary kinds that expose a score distribution.
    excess : (K, K) float
        Largest ``KS - sampling allowance - digest allowance`` over those kinds, clipped at 0.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    ids = list(summaries)
    k = len(ids)
    ks = np.zeros((k, k))
    excess = np.zeros((k, k))
    c_dkw = math.sqrt(math.log(4 / (1 - confidence)) / 2)
    seen: set[str] = set()
    for name, cal in calibrators.items():
        if cal.summary_kind in seen:
            continue
        samples = [_score_cdf(cal, summaries[c][name]) for c in ids]
        if any(s is None for s in samples):
            continue
        seen.add(cal.summary_kind)
        for i in range(k):
            for j in range(i + 1, k):
                (vi, ci, ei), (vj, cj, ej) = samples[i], samples[j]
                ni, nj = float(ci.sum()), float(cj.sum())
                if ni <= 0 or nj <= 0:
                    continue  # an empty client has no distribution to compare
                d = _ks((vi, ci), (vj, cj))
                allowance = c_dkw * (1 / math.sqrt(ni) + 1 / math.sqrt(nj)) + ei + ej
                ks[i, j] = ks[j, i] = max(ks[i, j], d)
                excess[i, j] = excess[j, i] = max(excess[i, j], d - allowance)
    return ids, ks, excess


def screen_clients(
    calibrators: Mapping[str, Calibrator],
    summaries: Mapping[str, Mapping[str, object]],
    byzantine_clients: int,
    tolerance: float = DEFAULT_TOLERANCE,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, str]:
    """Clients to leave out before the certified fit: ``{client id: reason}``, at most ``byzantine_clients``.

    First exact copies (every summary identical to an earlier client's: all but the first copy), then clients whose
    score distribution is far from their ``K - M - 1`` nearest peers (the most distant first). Nothing is flagged
    with ``M = 0``; the distance test needs ``K - M - 1 >= 1``.
    """
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    m = int(byzantine_clients)
    if m <= 0:
        return {}
    flagged = _duplicates(calibrators, summaries, m)
    # a benign client has K - M - 1 benign peers; a dropped copy leaves its (identical) twin among them
    peers = len(summaries) - m - 1
    cap = m - len(flagged)
    if cap < 1 or peers < 1:
        return flagged
    keep = {c: v for c, v in summaries.items() if c not in flagged}
    k = len(keep)
    ids, ks, excess = score_distances(calibrators, keep, confidence)
    outlying = []
    for i in range(k):
        others = np.delete(np.arange(k), i)
        order = others[np.argsort(excess[i, others], kind="stable")]
        j = order[peers - 1]  # the peers-th nearest client
        outlying.append((float(excess[i, j]), float(ks[i, j]), i))
    for score, dist, i in sorted(outlying, reverse=True)[:cap]:
        if score <= tolerance:
            break
        flagged[ids[i]] = (
            f"score distribution far from the other clients: Kolmogorov-Smirnov distance {dist:.3f} to its "
            f"{_ordinal(peers)} nearest client, {score:.3f} beyond the sampling and digest allowance "
            f"(tolerance {tolerance:g})"
        )
    return flagged


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _fingerprint(summary: object) -> bytes:
    """Exact content of a parsed summary (arrays by dtype, shape and bytes; scalars by value)."""
    fields = summary.items() if isinstance(summary, Mapping) else sorted(vars(summary).items())
    parts = []
    for key, val in sorted(fields, key=lambda kv: kv[0]):
        arr = np.asarray(val)
        parts.append(f"{key}:{arr.dtype.str}:{arr.shape}:".encode() + (arr.tobytes() if arr.dtype != object else repr(val).encode()))
    return b"|".join(parts)


def _duplicates(calibrators: Mapping[str, Calibrator], summaries: Mapping[str, Mapping[str, object]], cap: int) -> dict[str, str]:
    """Clients whose every summary is identical to an earlier client's (a copy or a replay): all but the first.

    Benign clients with continuous scores never send identical digests; keeping one copy keeps the benign data
    whichever of the two was honest, so dropping the others is safe for the guarantee.
    """
    first: dict[bytes, str] = {}
    out: dict[str, str] = {}
    for cid, per_method in summaries.items():
        fp = b"#".join(_fingerprint(per_method[name]) for name in calibrators)
        if fp in first and len(out) < cap:
            out[cid] = f"summaries identical to those of client {first[fp]!r} (a copy or a replay); one copy kept"
        first.setdefault(fp, cid)
    return out


# ------------------------------------------------------------------------------------------------ certification
class _MaxSolver:
    """Threshold of an atom pattern as the largest over the subset fits' solvers (lazy, for unseen atoms)."""

    def __init__(self, solvers: Sequence[object]) -> None:
        self.solvers = list(solvers)

    def threshold(self, pattern: np.ndarray) -> float:
        return max(float(s.threshold(pattern)) for s in self.solvers)


def fit_certified(
    cal: Calibrator, summaries: Sequence[object], pi: Sequence[object] | None, byzantine_clients: int
) -> Calibrator:
    """Fit ``cal`` robustly to ``byzantine_clients`` arbitrary summaries among ``summaries``.

    Fits a copy of ``cal`` on every subset of ``len(summaries) - M`` clients (π renormalised over the subset) and
    keeps, per atom / class / constant, the largest threshold. ``cal`` itself is fitted on every client (for its
    shapes and diagnostics) and then given the combined thresholds; ``cal.robust_info`` records the subsets.

    Raises
    ------
    ValueError
        ``M >= len(summaries)``, or a method whose sets are not thresholds on scores (set-valued frameworks with a
        calibration step).
    """
    from .adapters import ClassConditionalCalibrator, SetValuedCalibrator

    summaries = list(summaries)
    k, m = len(summaries), int(byzantine_clients)
    if m < 0:
        raise ValueError(f"byzantine_clients must be >= 0, got {m}")
    if m == 0:
        return cal.fit(summaries, pi)
    if k <= m:
        raise ValueError(f"{cal.name}: {k} trusted clients cannot tolerate byzantine_clients={m} (need at least {m + 1})")
    if isinstance(cal, SetValuedCalibrator):
        if cal.summary_kind == "svnone":  # nothing calibrated from client data: nothing to attack
            return cal.fit(summaries, pi)
        raise ValueError(f"{cal.name}: byzantine_clients > 0 is not supported for the set-valued framework {cal.framework!r}")
    template = copy.deepcopy(cal)
    fits = []
    subsets = list(combinations(range(k), k - m))
    for subset in subsets:
        sub = copy.deepcopy(template)
        chosen = [summaries[i] for i in subset]
        if isinstance(sub, ClassConditionalCalibrator) and sub.method == "clustered" and sub.n_clusters is None:
            sub.n_clusters = _present_class_heuristic(chosen, sub._alpha_raw)
        sub.fit(chosen, None if pi is None else [pi[i] for i in subset])
        fits.append(sub)
    cal.fit(summaries, pi)
    if isinstance(cal, ClassConditionalCalibrator):
        _combine_labels(cal, fits)
    else:
        _combine_atoms(cal, fits)
    cal.robust_info = {"byzantine_clients": m, "clients": k, "subset_fits": len(subsets)}
    return cal


def _present_class_heuristic(summaries: Sequence[Mapping[str, np.ndarray]], alpha: object) -> int:
    """Ding et al.'s number of clusters from the class counts of the classes the subset holds.

    The heuristic reads the rarest class; a subset that leaves out a label-skewed client has classes with no point
    at all, which would collapse every subset fit to one cluster (the standard threshold).
    """
    from .classcond import clustering_heuristic

    counts = 0
    for s in summaries:
        for part in ("clust", "proper"):
            cum = np.concatenate([[0], np.cumsum(np.asarray(s[f"{part}/weights"], dtype=np.int64))])
            off = np.asarray(s[f"{part}/offsets"], dtype=np.int64)
            counts = counts + (cum[off[1:]] - cum[off[:-1]])
    present = np.asarray(counts)[np.asarray(counts) > 0]
    # M <= 1 means the null cluster (standard threshold); 1 is its smallest valid spelling as n_clusters
    return max(1, clustering_heuristic(present, alpha)[1]) if present.size else 1


def _combine_labels(cal, fits) -> None:
    """Per class, the largest threshold over the subsets holding calibration points of that class.

    A subset without a point of class c has no mass on c (up to the sampling event named in docs/robustness.md), so
    its threshold for c (+inf from too few points) does not enter: otherwise one client holding a class alone would
    make that class's threshold +inf for everyone.
    """
    thr = np.array(cal.model.thresholds_, dtype=np.float64)
    for c in range(thr.size):
        vals = [float(f.model.thresholds_[c]) for f in fits if int(f.model.class_counts_[c]) > 0]
        thr[c] = max(vals) if vals else math.inf
    cal.model.thresholds_ = thr


def _combine_atoms(cal, fits) -> None:
    if cal._constant is not None:
        cal._constant = max(float(f._constant) for f in fits)
        return
    if hasattr(cal, "group_thresholds"):  # Mondrian: atom = max over its groups, so combine the groups as well
        cal.group_thresholds = np.max([f.group_thresholds for f in fits], axis=0)
    keys = sorted(set(cal._by_key).union(*(f._by_key for f in fits)))
    karr = np.asarray(keys, dtype=np.int64)
    cal._by_key = dict(zip(keys, np.max([f.threshold_for_keys(karr) for f in fits], axis=0).tolist()))
    if cal._solver is not None:
        cal._solver = _MaxSolver([f._solver for f in fits])
    cal._coreset = None  # a saved predictor must not re-solve unseen atoms from the unprotected full fit
