"""Group methods: Mondrian CP, CondCP, centralized GC-FCP and GC-FCP (per-atom digests), all solved per atom."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np

from ..core.groups import GroupSpec, keys_to_patterns, pattern_keys, unique_keys
from ..core.quantiles import split_conformal_threshold
from ..core.solver import AtomSolver
from ..core.summaries import DigestSummary, RawSummary, summarize_digests
from ..core.tdigest import TDigest, compress_sorted_segments, merge_digests
from ..core.validation import InsufficientDataWarning, check_delta, check_scores
from .base import _PI_UPPER, Calibrator, _client_integer_weights, _repeat_weights, _union

__all__ = ["CentralizedGCFCP", "CondCP", "DegenerateAtomsWarning", "GCFCP", "MondrianCP"]


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
        if np.asarray(values).size == 0:
            raise ValueError(f"{self.name}: no calibration scores from any client")
        uniq, index, counts = unique_keys(keys)
        patterns = keys_to_patterns(uniq, self.groups.n_groups)
        _warn_small_atoms(self.name, uniq, counts, self.alpha)  # before solving: a degenerate family can be slow
        self._solver = AtomSolver(values, weights, index, patterns, self.alpha, test_weight)
        self._coreset = (values, weights, keys, test_weight)  # kept for the saved predictor
        for key, pat in zip(uniq.tolist(), patterns):
            self._by_key[key] = self._solver.threshold(pat)


class DegenerateAtomsWarning(UserWarning):
    """Most calibration points sit in atoms of their own: per-atom thresholds and digests lose their advantage."""


def _warn_small_atoms(name: str, uniq: np.ndarray, counts: np.ndarray, alpha: Fraction) -> None:
    """Warn about degenerate families; ``uniq``/``counts``: the distinct atom keys and their points (or clusters)."""
    need = math.ceil((1 - alpha) / alpha)
    total = int(counts.sum())
    if uniq.size >= 50 and uniq.size > total / 4:
        warnings.warn(
            f"{name}: {uniq.size} distinct membership patterns for {total} calibration points/clusters: the groups "
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
        return summarize_digests(s, self.atom_keys(features, s.size), self.delta)

    def _fit(self, summaries, pi) -> None:
        lam_ints, test_w = _client_integer_weights([s.n for s in summaries], pi)
        if self.merge and _merge_all_atoms(self, summaries, lam_ints, test_w):
            return
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


def _merge_all_atoms(cal: GCFCP, summaries, lam_ints: list[int], test_w: int) -> bool:
    """GC-FCP's server merge for all atoms in one pass; False (nothing done) when int64 sums could overflow.

    Equal, bit for bit, to :func:`~flwr_gcfcp.core.tdigest.merge_digests` per atom over the clients' digests in
    client order: a stable sort by atom key and mean gives each atom the order merge_digests sorts it into, and
    :func:`~flwr_gcfcp.core.tdigest.compress_sorted_segments` is the same greedy pass on every atom.
    """
    if not summaries:
        return False
    counts = [s.counts for s in summaries]
    if max(lam_ints) >= 2**61 or sum(int(c.sum()) * w for c, w in zip(counts, lam_ints)) >= 2**61:  # int64 sums
        return False
    keys = np.concatenate([np.repeat(s.atom_keys, s.offsets[1:] - s.offsets[:-1]) for s in summaries])
    means = np.concatenate([s.means for s in summaries])
    weights = np.concatenate([c.astype(np.int64) * w for c, w in zip(counts, lam_ints)])
    if not means.size:
        return False
    order = np.lexsort((means, keys))  # by atom, then by mean; equal means in client order (lexsort is stable)
    keys, means, weights = keys[order], means[order], weights[order]
    bounds = np.concatenate([[0], np.flatnonzero(keys[1:] != keys[:-1]) + 1, [keys.size]])
    merged, merged_w, cluster_offsets = compress_sorted_segments(means, weights, bounds, cal.delta)
    cal.coreset_size = int(merged.size)
    atom_keys = np.repeat(keys[bounds[:-1]], cluster_offsets[1:] - cluster_offsets[:-1])
    cal._solve_on(merged, merged_w, atom_keys, test_w)
    return True
