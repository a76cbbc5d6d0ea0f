"""The arcsine T-digest exactly as GC-FCP specifies it (§4.2.1, App. B).

Hand-written on purpose: the coverage guarantee (Lemma 5.1, Thm 5.1) depends on this exact construction (scale
function, greedy rule, step CDF without interpolation); library digests use other scale functions and merge orders,
so the paper's bound does not hold for them.

Construction
------------
Weighted samples ``(R_i, w_i)`` are sorted by value (stable sort, so ties keep their input order) and grouped
greedily into clusters of consecutive samples. A cluster that starts at normalised cumulative weight ``q_L`` keeps
taking the next sample while ``r(q_R) - r(q_L) <= 1`` with ``r(q) = δ/(2π) · asin(2q - 1)``. A cluster always
takes at least one sample (a single sample heavier than the rule allows forms its own cluster). Because ``r`` is
increasing, the right edge is the largest cumulative weight ``q`` with

    q <= (1 + sin(asin(2 q_L - 1) + 2π/δ)) / 2      (= 1 when the angle passes π/2),

evaluated in the cancellation-free form ``q_L cos θ + sin²(θ/2) + sqrt(q_L (1 - q_L)) sin θ`` with ``θ = 2π/δ``.
One ``np.searchsorted`` per cluster, so building is O(n log n) for the sort plus O(δ log n); with unit weights
the cumulative weights are 1..n and the bound gives a cluster's end directly (:func:`_unit_starts`, O(δ)).
:func:`compress_sorted_segments` runs the same pass for many digests at once (a client's atoms, the server's merge
of every atom), bit for bit equal to it per digest.

Floating point
--------------
The right-edge test is done in float64 with a safety margin ``EDGE_MARGIN`` (2⁻⁴⁵ ≈ 2.8e-14, about 128 ulps of
1) subtracted from the bound: a computed cluster is never heavier than the exact-arithmetic rule allows (the
float error of the bound is a few ulps), so ``W_c / W <= sin(π/δ)`` holds for every multi-sample cluster. The
only effect of the margin is that a cluster may close one sample early when a cumulative weight lies within
2.8e-14 of the exact bound. With integer weights the cumulative weights are exact integers (int64, or Python
ints in an object array); with float weights the bound holds up to the float error of the cumulative sums.

Cluster means are computed in float64 as ``L_c + Σ w_i (R_i - L_c) / W_c`` and clipped to ``[L_c, U_c]`` (the
cluster's smallest and largest value), so means are non-decreasing across clusters and a cluster of tied values
has exactly that value as its mean. Cluster weights are sums in the weights' own dtype (exact for integers).

Error bound
-----------
``sup_t |F(t) - F̂(t)| <= sin(π/δ)`` for ``δ >= 2`` (Lemma 5.1) against the weighted empirical CDF of the input;
for ``δ < 2`` the rule puts everything into one cluster and the bound is 1 (see :func:`cdf_error_bound`). A
single-value cluster (one sample, or tied samples) contributes no error, so heavy samples do not break the
bound. For a digest merged from digests built at ``δ_j`` and recompressed at ``δ``, the error against the
original data is at most ``max_j sin(π/δ_j) + sin(π/δ)`` (triangle inequality; see :func:`merge_digests`).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from fractions import Fraction
from numbers import Integral
from typing import Mapping, Sequence

import numpy as np

from .validation import check_delta, check_scores

__all__ = [
    "EDGE_MARGIN",
    "STRUCTURE_TOLERANCE",
    "TDigest",
    "build_digest",
    "cdf_error_bound",
    "check_unit_structure",
    "compress_sorted_segments",
    "first_structure_violation",
    "merge_digests",
]

#: Safety margin (in normalised weight) subtracted from the greedy right-edge bound; see the module docstring.
EDGE_MARGIN = 2.0**-45

_INT64_MAX = np.iinfo(np.int64).max

#: Slack (in normalised weight) with which :func:`check_unit_structure` compares cluster edges with the greedy
#: bound: far above the float error of the bound (a few ulps, also across libm implementations), far below one
#: point (1/n) for any n up to 10**9.
STRUCTURE_TOLERANCE = 2.0**-40


def _show(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cdf_error_bound(delta: float) -> float:
    """Uniform CDF error bound of a digest built at compression ``delta`` (Lemma 5.1).

    Returns ``sin(π/δ)`` for ``δ >= 2`` and ``1.0`` for ``δ < 2`` (there the greedy rule makes a single
    cluster, and the paper's symmetric-maximum argument needs ``π/δ <= π/2``).
    """
    delta = check_delta(delta)
    return math.sin(math.pi / delta) if delta >= 2.0 else 1.0


# --------------------------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------------------------
def _is_int_like(x: object) -> bool:
    return isinstance(x, Integral) and not isinstance(x, (bool, np.bool_))


def _check_weights(weights: object, n: int, name: str = "weights") -> np.ndarray:
    """Return positive weights as int64, object (Python ints) or float64, preserving exactness."""
    if weights is None:
        return np.ones(n, dtype=np.int64)
    arr = np.asarray(weights)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} must have the same length as the values ({n}), got {arr.shape[0]}")
    if arr.dtype == np.bool_:
        raise ValueError(f"{name} must be numeric, got dtype bool")
    if arr.dtype == object:
        items = arr.tolist()
        if all(_is_int_like(x) for x in items):
            ints = [int(x) for x in items]
            bad = [i for i, x in enumerate(ints) if x <= 0]
            if bad:
                raise ValueError(f"{name} must be > 0: {len(bad)} non-positive, first {ints[bad[0]]} at index {bad[0]}")
            out = np.empty(n, dtype=object)
            out[:] = ints
            return out
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be numbers, got {_show(items[:5])}") from None
    if np.issubdtype(arr.dtype, np.integer):
        if n and arr.min() <= 0:
            i = int(np.argmin(arr))
            raise ValueError(f"{name} must be > 0: {int((arr <= 0).sum())} non-positive, first {arr[i]} at index {i}")
        if n and (int(arr.max()) > _INT64_MAX // max(n, 1)):
            # the int64 cumulative sum could overflow: carry exact Python ints instead
            out = np.empty(n, dtype=object)
            out[:] = [int(x) for x in arr.tolist()]
            return out
        return arr.astype(np.int64, copy=False)
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64, copy=False)
        bad = ~np.isfinite(arr) | (arr <= 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{name} must be finite and > 0: {int(bad.sum())} bad, first {arr[i]!r} at index {i}")
        return arr
    raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")


def _common_weights(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate weight arrays in a common exact dtype (float64 if any is float, else int64 or object ints)."""
    if any(p.dtype.kind == "f" for p in parts):
        return np.concatenate([p.astype(np.float64) for p in parts])
    if all(p.dtype == np.int64 for p in parts) and sum(int(p.sum()) for p in parts) <= _INT64_MAX:
        return np.concatenate(parts)
    out = np.concatenate([p if p.dtype == object else p.astype(object) for p in parts])
    items = out.tolist()
    if set(map(type, items)) != {int}:  # e.g. numpy integers inside an object array: exact Python ints
        out[:] = [int(x) for x in items]
    return out


# --------------------------------------------------------------------------------------------------------------
# greedy pass
# --------------------------------------------------------------------------------------------------------------
def _rotation(delta: float) -> tuple[float, float, float] | None:
    """(cos θ, sin θ, sin²(θ/2)) of the bound's rotation θ = 2π/δ; None for δ <= 2 (θ >= π: one cluster)."""
    theta = 2.0 * math.pi / delta
    if theta >= math.pi:
        return None
    return math.cos(theta), math.sin(theta), math.sin(theta / 2.0) ** 2


def _cluster_ends(cumf: np.ndarray, total: float, delta: float) -> np.ndarray:
    """Inclusive end index of each greedy cluster over sorted samples with float cumulative weights ``cumf``."""
    n = cumf.shape[0]
    rotation = _rotation(delta)
    if rotation is None:  # δ <= 2: the first cluster's angle already reaches π/2, everything fits
        return np.array([n - 1], dtype=np.int64)
    cos_t, sin_t, sin2_half = rotation
    ends: list[int] = []
    start = 0
    cum = cumf.tolist()  # bisect on a list of Python floats: the same comparisons as searchsorted, far less overhead
    while start < n:
        q_left = cum[start - 1] / total if start else 0.0
        if 2.0 * q_left - 1.0 >= cos_t:  # asin(2 q_L - 1) + θ >= π/2: every remaining sample fits
            end = n - 1
        else:
            bound = q_left * cos_t + sin2_half + math.sqrt(max(q_left * (1.0 - q_left), 0.0)) * sin_t - EDGE_MARGIN
            end = bisect_right(cum, bound * total, start) - 1
            if end < start:  # a cluster always takes at least one sample
                end = start
        ends.append(end)
        start = end + 1
    return np.asarray(ends, dtype=np.int64)


def _unit_starts(n: int, delta: float) -> np.ndarray:
    """Start index of each greedy cluster over ``n >= 1`` unit-weight samples, one scalar bound per cluster.

    The cumulative weights are 1..n, so a cluster starting after ``s`` points takes the points up to
    ``floor(n · bound(s/n))`` (at least one; all the rest once ``2 s/n - 1 >= cos θ``): the same bound with the same
    float operations as :func:`_cluster_ends`, without its list of n cumulative weights (O(clusters), not O(n)).
    """
    rotation = _rotation(delta)
    if rotation is None:  # δ <= 2: one cluster
        return np.zeros(1, dtype=np.int64)
    cos_t, sin_t, sin2_half = rotation
    sqrt, floor, nf = math.sqrt, math.floor, float(n)
    starts = []
    start = 0
    while start < n:
        starts.append(start)
        q = start / nf
        if 2.0 * q - 1.0 >= cos_t:
            break
        end = floor((q * cos_t + sin2_half + sqrt(q * (1.0 - q)) * sin_t - EDGE_MARGIN) * nf)
        start = start + 1 if end <= start else min(end, n)
    return np.asarray(starts, dtype=np.int64)


def check_unit_structure(counts: np.ndarray, delta: float) -> str | None:
    """Check that cluster sizes are those the greedy construction gives for unit weights at ``delta``.

    With unit weights the cumulative weights are ``1..n``, so the clusters :func:`build_digest` forms depend only
    on ``n = sum(counts)`` and ``δ``: cluster ``j`` starting at cumulative count ``C`` ends at
    ``min(n, max(C + 1, floor(n · bound(C/n))))`` (every remaining point once ``2C/n - 1 >= cos(2π/δ)``). This
    checks each cluster against that rule, allowing either outcome where the float bound lies within
    :data:`STRUCTURE_TOLERANCE` of an integer, so a digest built by this module on another platform passes.

    Parameters
    ----------
    counts : (m,) positive integers
        Points per cluster in cluster order (their sum ``n`` must fit in int64).
    delta : float

    Returns
    -------
    str or None
        None for a valid δ-digest structure, else which cluster breaks the rule and how (too heavy: the
        sin(π/δ) error bound fails; too light: more clusters than the construction makes).
    """
    c = np.asarray(counts, dtype=np.int64)
    found = first_structure_violation(c, np.array([0, c.size]), delta)
    return None if found is None else found[1]


def first_structure_violation(counts: np.ndarray, offsets: np.ndarray, delta: float) -> tuple[int, str] | None:
    """:func:`check_unit_structure` for many digests at once (digest ``i`` is ``counts[offsets[i]:offsets[i + 1]]``,
    each non-empty), vectorised over all clusters; returns ``(i, reason)`` for the first digest that fails."""
    delta = check_delta(delta)
    c = np.asarray(counts, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    sizes = np.diff(offsets)
    if not c.size:
        return None
    atom = np.repeat(np.arange(sizes.size), sizes)
    cum_all = np.cumsum(c)
    before = np.concatenate([[0], cum_all])[offsets[:-1]]  # points in earlier digests
    cum = cum_all - before[atom]
    left = cum - c
    n = (np.add.reduceat(c, offsets[:-1]) if sizes.size else np.zeros(0, np.int64))[atom]
    rotation = _rotation(delta)
    if rotation is None:
        multi = np.flatnonzero(sizes > 1)
        if not multi.size:
            return None
        i = int(multi[0])
        return i, f"{int(sizes[i])} clusters, but at δ = {delta:g} <= 2 the digest has one cluster"
    cos_t, sin_t, sin2_half = rotation
    tol = STRUCTURE_TOLERANCE
    nf = n.astype(np.float64)
    q = left.astype(np.float64) / nf
    bound = q * cos_t + sin2_half + np.sqrt(np.maximum(q * (1.0 - q), 0.0)) * sin_t - EDGE_MARGIN
    lo = np.minimum(n, np.maximum(left + 1, np.floor((bound - tol) * nf).astype(np.int64)))
    hi = np.minimum(n, np.maximum(left + 1, np.floor((bound + tol) * nf).astype(np.int64)))
    tail = 2.0 * q - 1.0
    lo = np.where(tail >= cos_t + tol, n, lo)  # past the last angle the cluster takes every remaining point
    hi = np.where(tail >= cos_t - tol, n, hi)
    bad = np.flatnonzero((cum < lo) | (cum > hi))
    if not bad.size:
        return None
    k = int(bad[0])
    i, j = int(atom[k]), k - int(offsets[atom[k]])
    kind = "more points than the arcsine rule allows" if cum[k] > hi[k] else "fewer points than the greedy construction takes"
    return i, (
        f"cluster {j} of {int(sizes[i])} (points {int(left[k]) + 1}..{int(cum[k])} of {int(n[k])}) holds {kind} at "
        f"δ = {delta:g} (it must end at point {int(lo[k])}" + (f"..{int(hi[k])})" if hi[k] != lo[k] else ")")
    )


def _compress(values: np.ndarray, weights: np.ndarray, delta: float, unit: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Greedy clustering of sorted ``values`` with ``weights``; returns (means float64, cluster weights)."""
    n = values.shape[0]
    as_object = False
    if weights.dtype == object and not unit:
        # Python-int weights that fit: the same exact sums in int64 (much faster), returned as Python ints
        try:
            w64 = weights.astype(np.int64)
        except OverflowError:
            w64 = None
        if w64 is not None and float(w64.sum(dtype=np.float64)) < 2.0**62:
            weights, as_object = w64, True
    if unit:
        starts = _unit_starts(n, delta)
        ends = np.append(starts[1:] - 1, n - 1)
        cum_end = ends + 1
    else:
        cum = np.cumsum(weights)  # own dtype: exact for int64 / object ints
        cumf = cum.astype(np.float64) if cum.dtype != np.float64 else cum
        ends = _cluster_ends(cumf, float(cumf[-1]), delta)
        starts = np.empty_like(ends)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        cum_end = cum[ends]
    cluster_w = cum_end.copy()
    cluster_w[1:] = cum_end[1:] - cum_end[:-1]
    if as_object:
        cluster_w = cluster_w.astype(object)
    lo = values[starts]
    hi = values[ends]
    counts = ends - starts + 1
    if ends.shape[0] == n:  # every sample is its own cluster
        return values.copy(), cluster_w
    shifted = values - np.repeat(lo, counts)
    if unit:
        num = np.add.reduceat(shifted, starts)
        den = counts.astype(np.float64)
    else:
        wf = weights.astype(np.float64) if weights.dtype != np.float64 else weights
        num = np.add.reduceat(wf * shifted, starts)
        den = cluster_w.astype(np.float64)
    means = np.clip(lo + num / den, lo, hi)
    return means, cluster_w


def compress_sorted_segments(
    values: np.ndarray, weights: np.ndarray | None, offsets: np.ndarray, delta: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The greedy pass of :func:`build_digest` / :func:`merge_digests` for many digests at once.

    Segment ``i`` is ``values[offsets[i]:offsets[i + 1]]`` (non-empty, sorted; ties in the order the per-digest
    stable sort would give) with the matching ``weights`` (None: unit weights). Every segment's digest equals, bit
    for bit, what the per-digest pass gives on that segment alone: the same cumulative weights, the same float
    right-edge bound per cluster, the same ``reduceat`` sums over the same elements. Segments of at most
    ``8 (δ + 2)`` samples (a client's atoms) evaluate the bound for every sample as a cluster start at once and walk
    from start to start in Python; longer ones (far more samples than clusters) compute one bound per cluster:
    :func:`_unit_starts` for unit weights, :func:`_cluster_ends` (one bisection each) for integer weights.

    Parameters
    ----------
    values : (N,) float64
    weights : (N,) int64 or None
        Positive integer weights whose total is below 2**62 (exact int64 cumulative sums), or None.
    offsets : (S + 1,) int64
        Segment bounds, ``offsets[0] = 0``, ``offsets[-1] = N``, strictly increasing.
    delta : float

    Returns
    -------
    means, cluster_weights, cluster_offsets
        float64 means and int64 cluster weights (counts for unit weights) of all segments back to back, and the
        (S + 1,) bounds of each segment's clusters.
    """
    delta = check_delta(delta)
    offsets = np.asarray(offsets, dtype=np.int64)
    n_total = values.shape[0]
    if not n_total:
        return np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(offsets.size, dtype=np.int64)
    sizes = offsets[1:] - offsets[:-1]
    if weights is None:
        cum = cumf = None
    else:
        glob = np.cumsum(weights)
        cum = glob - np.concatenate([[0], glob])[np.repeat(offsets[:-1], sizes)]  # within each segment
        cumf = cum.astype(np.float64)
    big = sizes > 8.0 * (delta + 2.0)
    if not big.any():
        starts = _chain_starts(cumf, offsets, delta)
    else:
        found = []
        small = np.flatnonzero(~big)
        if small.size:  # the short segments together, then mapped back to their place
            sub_sizes = sizes[small]
            sub_offsets = np.concatenate([[0], np.cumsum(sub_sizes)])
            shift = offsets[small] - sub_offsets[:-1]
            pts = np.repeat(shift, sub_sizes) + np.arange(int(sub_offsets[-1]))
            sub = _chain_starts(None if cumf is None else cumf[pts], sub_offsets, delta)
            found.append(sub + shift[np.searchsorted(sub_offsets, sub, side="right") - 1])
        for i in np.flatnonzero(big).tolist():
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            if cumf is None:
                found.append(_unit_starts(hi - lo, delta) + lo)
            else:
                ends = _cluster_ends(cumf[lo:hi], float(cumf[hi - 1]), delta)
                found.append(np.concatenate([[lo], ends[:-1] + 1 + lo]))
        starts = np.sort(np.concatenate(found))
    stops = np.concatenate([starts[1:], [n_total]])
    counts = stops - starts
    ends = stops - 1
    cluster_offsets = starts.searchsorted(offsets)
    lo = values[starts]
    hi = values[ends]
    shifted = values - np.repeat(lo, counts)
    if weights is None:
        cluster_w = counts
        num = np.add.reduceat(shifted, starts)
        den = counts.astype(np.float64)
    else:
        cluster_w = cum[ends] - cum[starts] + weights[starts]
        num = np.add.reduceat(weights.astype(np.float64) * shifted, starts)
        den = cluster_w.astype(np.float64)
    means = np.clip(lo + num / den, lo, hi)
    per_segment = cluster_offsets[1:] - cluster_offsets[:-1]
    singles = per_segment == sizes
    if singles.any():  # segments where every sample is its own cluster keep their values as they are
        np.putmask(means, np.repeat(singles, per_segment), lo)
    return means, cluster_w, cluster_offsets


def _chain_starts(cumf: np.ndarray | None, offsets: np.ndarray, delta: float) -> np.ndarray:
    """Cluster start indices of :func:`_cluster_ends` on every segment (``cumf``: float cumulative weights within
    each segment; None for unit weights, as :func:`_unit_starts` per segment), evaluating the bound for each sample
    as a potential start at once."""
    sizes = offsets[1:] - offsets[:-1]
    n_total = int(offsets[-1])
    rotation = _rotation(delta)
    if rotation is None:  # δ <= 2: one cluster per segment
        return offsets[:-1].copy()
    # sample indices and segment bounds as floats (exact integers below 2**53)
    index = np.arange(n_total, dtype=np.float64)
    base = np.repeat(offsets[:-1].astype(np.float64), sizes)  # first index of each sample's segment
    if cumf is None:
        prev = index - base  # cumulative weight before each sample (exact integers)
        tot = np.repeat(sizes.astype(np.float64), sizes)
    else:
        prev = np.concatenate([[0.0], cumf[:-1]])
        prev[offsets[:-1]] = 0.0
        tot = np.repeat(cumf[offsets[1:] - 1], sizes)
    cos_t, sin_t, sin2_half = rotation
    # _cluster_ends' bound for a cluster starting at every sample, with the same float operations in the same
    # order (q ∈ [0, 1], so q (1 - q) >= 0 and the max with 0 there is a no-op)
    q = prev / tot
    x = q * cos_t
    x += sin2_half
    r = 1.0 - q
    r *= q
    np.sqrt(r, out=r)
    r *= sin_t
    x += r
    x -= EDGE_MARGIN
    x *= tot
    if cumf is None:  # cumulative weights 1..n: floor(x) of them are <= x (at most n)
        below = np.minimum(np.floor(x, out=x), tot, out=x)
    else:
        below = np.empty(n_total, dtype=np.float64)
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
            below[a:b] = np.searchsorted(cumf[a:b], x[a:b], side="right")
    # the next start: one past the last sample <= x, and at least one past the start itself
    below += base
    index += 1.0
    nxt = np.maximum(below, index, out=below)
    q *= 2.0
    q -= 1.0
    tail = q >= cos_t  # past π/2 every remaining sample fits
    np.putmask(nxt, tail, base + tot if cumf is None else np.repeat(offsets[1:].astype(np.float64), sizes))
    jumps = np.flatnonzero(nxt != index)  # a cluster starting there takes more than that one sample
    if 2 * jumps.size > n_total:  # mostly multi-sample clusters: walk from start to start
        nxt_list = nxt.astype(np.int64).tolist()
        starts = []
        start = 0
        while start < n_total:
            starts.append(start)
            start = nxt_list[start]
        return np.asarray(starts, dtype=np.int64)
    if not jumps.size:
        return np.arange(n_total, dtype=np.int64)
    ends = nxt[jumps].astype(np.int64)  # one past such a cluster's last sample
    # from 0 the starts advance one sample at a time up to a jump, then past its cluster; nxt is non-decreasing, so
    # the next jump reached after a cluster ending at e is the first jump at or after e: walk from jump to jump
    after = jumps.searchsorted(ends).tolist()
    taken, k, n_jumps = [], 0, len(after)
    while k < n_jumps:
        taken.append(k)
        k = after[k]
    inside = np.zeros(n_total + 1, dtype=np.int64)  # +1 after a taken jump, -1 at its cluster's end
    inside[jumps[taken] + 1] = 1
    inside[ends[taken]] = -1
    return np.flatnonzero(np.cumsum(inside[:n_total]) == 0)


# --------------------------------------------------------------------------------------------------------------
# digest
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TDigest:
    """A T-digest: cluster means (non-decreasing float64) and positive cluster weights.

    Attributes
    ----------
    means : np.ndarray
        (m,) float64, non-decreasing.
    weights : np.ndarray
        (m,) positive; int64 and object arrays of Python ints stay exact, otherwise float64.
    delta : float
        Compression parameter δ used to build the digest.
    """

    means: np.ndarray
    weights: np.ndarray
    delta: float

    # ---------------------------------------------------------------------------------------------- properties
    @property
    def total_weight(self) -> int | float:
        """Total weight W (a Python int for integer weights, float otherwise)."""
        if self.weights.dtype.kind == "f":
            return float(self.weights.sum())
        return int(sum(self.weights.tolist())) if self.weights.dtype == object else int(self.weights.sum())

    @property
    def n_clusters(self) -> int:
        """Number of clusters m."""
        return int(self.means.shape[0])

    @property
    def error_bound(self) -> float:
        """Uniform CDF error bound ``sin(π/δ)`` of a digest built directly from data (Lemma 5.1)."""
        return cdf_error_bound(self.delta)

    def _cum(self) -> np.ndarray:
        return np.cumsum(self.weights)

    # --------------------------------------------------------------------------------------------- queries
    def cdf(self, t: object) -> np.ndarray | float:
        """Step CDF ``F̂(t) = Σ_c W_c 1{mean_c <= t} / W`` (no interpolation).

        Parameters
        ----------
        t : float or array_like
            Evaluation points (NaN not allowed).

        Returns
        -------
        float or np.ndarray
            Same shape as ``t``.
        """
        arr = np.asarray(t, dtype=np.float64)
        if np.isnan(arr).any():
            raise ValueError(f"t must not be NaN, got {_show(t)}")
        cum = self._cum()
        cumf = np.concatenate([[0.0], cum.astype(np.float64)])
        out = cumf[np.searchsorted(self.means, arr, side="right")] / cumf[-1]
        return float(out) if out.ndim == 0 else out

    def quantile(self, u: object) -> np.ndarray | float:
        """Generalised inverse ``Q̂(u) = inf{t : F̂(t) >= u}``.

        ``u <= 0`` gives ``-inf`` and ``u > 1`` gives ``+inf`` (the infimum of all / of no points). Float levels are
        compared with the same float ratios ``cum_c / W`` that :meth:`cdf` returns. A scalar ``Fraction`` level
        with integer weights is compared exactly (``cum_c >= u · W`` in integers).
        """
        if isinstance(u, Fraction) and self.weights.dtype.kind != "f":
            if u <= 0:
                return -math.inf
            if u > 1:
                return math.inf
            need = math.ceil(u * self.total_weight)
            return float(self.means[bisect_left(self._cum().tolist(), need)])
        arr = np.asarray(u, dtype=np.float64)
        if np.isnan(arr).any():
            raise ValueError(f"u must not be NaN, got {_show(u)}")
        cumf = self._cum().astype(np.float64)
        frac = cumf / cumf[-1]
        idx = np.searchsorted(frac, arr, side="left")
        padded = np.concatenate([self.means, [np.inf]])
        out = np.where(arr <= 0, -np.inf, padded[np.minimum(idx, self.means.shape[0])])
        out = np.where(arr > 1, np.inf, out)
        return float(out) if out.ndim == 0 else out

    # ------------------------------------------------------------------------------------------ serialisation
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays: ``means`` (float64), ``weights`` (own dtype) and ``delta`` (0-d float64)."""
        return {
            "means": np.array(self.means, dtype=np.float64),
            "weights": self.weights.copy(),
            "delta": np.asarray(self.delta, dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, object]) -> "TDigest":
        """Rebuild a digest from :meth:`to_arrays` output, validating every field.

        Raises
        ------
        ValueError
            Missing keys, non-finite or unsorted means, non-positive or non-finite weights, unequal lengths,
            empty digest, bad delta. The message names the field.
        """
        for key in ("means", "weights", "delta"):
            if key not in arrays:
                raise ValueError(f"arrays must contain '{key}', got keys {sorted(arrays)}")
        delta_arr = np.asarray(arrays["delta"])
        if delta_arr.size != 1:
            raise ValueError(f"delta must be a scalar, got shape {delta_arr.shape}")
        delta = check_delta(delta_arr.reshape(()).item(), "delta")
        means = check_scores(arrays["means"], name="means")
        weights = _check_weights(arrays["weights"], means.shape[0], name="weights")
        if means.shape[0] > 1 and np.any(np.diff(means) < 0):
            i = int(np.argmax(np.diff(means) < 0))
            raise ValueError(f"means must be non-decreasing: means[{i}]={means[i]!r} > means[{i + 1}]={means[i + 1]!r}")
        return cls(means=means, weights=weights, delta=delta)


def build_digest(values: object, weights: object = None, delta: float = 250.0) -> TDigest:
    """Build the paper's arcsine T-digest of weighted samples.

    Parameters
    ----------
    values : array_like
        (n,) finite samples, n >= 1.
    weights : array_like or None
        (n,) positive weights. None means int64 ones. int64 and object arrays of Python ints stay exact (cluster
        weights are integer sums); floats become float64.
    delta : float
        Compression δ > 0; the digest has at most about δ + 2 clusters and CDF error <= sin(π/δ).

    Returns
    -------
    TDigest
    """
    delta = check_delta(delta)
    vals = check_scores(values, name="values")
    unit = weights is None
    w = _check_weights(weights, vals.shape[0])
    if unit:
        v_sorted = np.sort(vals)
        w_sorted = w
    else:
        order = np.argsort(vals, kind="stable")
        v_sorted = vals[order]
        w_sorted = w[order]
    means, cw = _compress(v_sorted, w_sorted, delta, unit=unit)
    return TDigest(means=means, weights=cw, delta=delta)


def merge_digests(digests: Sequence[TDigest], delta: float | None = None) -> TDigest:
    """Merge digests: the same greedy pass over the union of their centroids (means as values).

    Parameters
    ----------
    digests : sequence of TDigest
        At least one digest.
    delta : float or None
        Compression of the merged digest; None uses the inputs' δ if they agree, else the smallest (coarsest).

    Returns
    -------
    TDigest
        Weights stay exact when all inputs have integer weights (int64, promoted to object ints on overflow).

    Notes
    -----
    Against the pooled original data, the merged CDF error is at most ``max_j sin(π/δ_j) + sin(π/δ)``: each
    input digest is within ``sin(π/δ_j)`` of its data (at most one cluster per digest straddles any t, so the
    weighted errors add up to at most the maximum), and the recompression adds at most ``sin(π/δ)`` against
    the union of centroids. For equal δ this is ``2 sin(π/δ)``.
    """
    if isinstance(digests, TDigest):
        digests = [digests]
    digests = list(digests)
    if not digests:
        raise ValueError("digests must contain at least one TDigest, got an empty sequence")
    for i, d in enumerate(digests):
        if not isinstance(d, TDigest):
            raise ValueError(f"digests[{i}] must be a TDigest, got {type(d).__name__}")
    if delta is None:
        delta = min(d.delta for d in digests)
    delta = check_delta(delta)
    means = np.concatenate([d.means for d in digests])
    weights = _common_weights([d.weights for d in digests])
    order = np.argsort(means, kind="stable")
    m, w = _compress(means[order], weights[order], delta)
    return TDigest(means=m, weights=w, delta=delta)
