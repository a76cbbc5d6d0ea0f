"""Exact per-atom thresholds of the weighted augmented quantile regression (GC-FCP problems (10) and (22)).

The regression uses group-indicator features, so it depends on a test point only through its membership pattern
(atom). The largest admissible test score is therefore one number per atom (ALGORITHMS.md §4, §9):

    S*(a) = min { θ_a : θ ∈ argmin_{θ ∈ range(P)} Σ_b f_b(θ_b) - u θ_a },   u = (1 - α) w_test,

where θ_b = Φ_bᵀβ is the fitted value at atom b, P stacks the atom patterns and
f_b(θ) = Σ_{i in b} w_i ℓ_α(S_i - θ) is the pinball loss of atom b. A label y is in the set of a test point in
atom a iff ``s(x, y) <= S*(a)``.

One algorithm serves every family of group indicators (any overlap, duplicate or dependent groups, up to the 62
groups the atom keys allow): an exact dual simplex over the atoms (:mod:`.simplex`), started for each target atom
from the previous target's optimal basis. Weights are converted to integers on a common power-of-two scale and α
is read as an exact decimal, so every threshold is exact for the given inputs (rounded down to the nearest float
when it is a combination of several scores), and each one is verified by an exact optimality certificate
(:func:`.simplex.check_certificate`) before it is returned. ``+inf`` means the data do not bound the fit at that
atom (too little data in the atom, or a pattern outside the span of the calibration data): the certificate is then
a direction along which the objective decreases without bound.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from .simplex import Certificate, DualSimplex, check_certificate
from .validation import alpha_fraction, check_scores

__all__ = ["AtomSolver", "atom_thresholds", "exact_integer_weights", "left_null_space"]

_INT64_SAFE = 2**62


def exact_integer_weights(weights: np.ndarray, *extra: object) -> tuple[np.ndarray, list[int]]:
    """Scale weights (and extra scalars) to exact integers on one common scale.

    Integer inputs are kept; floats are decomposed as ``mantissa · 2**exponent`` and shifted to the smallest
    common power of two, which is exact (every float is a dyadic rational).

    Returns
    -------
    (array, extras)
        The weights as int64 when every number fits, else as an object array of Python ints, and the extra
        scalars as Python ints on the same scale.
    """
    w = np.asarray(weights)
    extras = list(extra)
    is_int = (w.dtype.kind in "iu" or (w.dtype == object and all(isinstance(x, (int, np.integer)) for x in w))) and all(
        isinstance(x, (int, np.integer)) for x in extras
    )
    if is_int and w.dtype.kind in "iu" and w.size and int(np.abs(w).max()) * w.size < _INT64_SAFE:
        return w.astype(np.int64), [int(x) for x in extras]
    if is_int:
        ints = [int(x) for x in w.tolist()]
        ext = [int(x) for x in extras]
    else:
        fl = np.concatenate([w.astype(np.float64).ravel(), np.asarray(extras, dtype=np.float64)])
        if not np.all(np.isfinite(fl)):
            raise ValueError("weights must be finite")
        mant, expo = np.frexp(fl)
        mant_int = (mant * 2.0**53).astype(np.int64)
        expo = expo.astype(np.int64) - 53
        nz = mant_int != 0
        base = int(expo[nz].min()) if nz.any() else 0
        shifts = (expo - base).tolist()
        vals = [int(m) << s for m, s in zip(mant_int.tolist(), shifts)]
        ints, ext = vals[: w.size], vals[w.size :]
    biggest = max((abs(x) for x in ints), default=0) * max(len(ints), 1)
    if biggest < _INT64_SAFE:
        return np.asarray(ints, dtype=np.int64), ext
    arr = np.empty(len(ints), dtype=object)
    arr[:] = ints
    return arr, ext


def left_null_space(patterns: np.ndarray) -> list[list[int]]:
    """Integer basis of {n : nᵀP = 0} for a 0/1 pattern matrix P (m, d), by exact rational elimination."""
    p = np.asarray(patterns, dtype=np.int64)
    m, d = p.shape
    # Row-reduce Pᵀ (d × m); free columns give the null-space basis of Pᵀ, i.e. the left null space of P.
    rows = [[Fraction(int(p[i, j])) for i in range(m)] for j in range(d)]
    pivots: list[int] = []
    r = 0
    for col in range(m):
        pivot = next((i for i in range(r, d) if rows[i][col] != 0), None)
        if pivot is None:
            continue
        rows[r], rows[pivot] = rows[pivot], rows[r]
        inv = 1 / rows[r][col]
        rows[r] = [x * inv for x in rows[r]]
        for i in range(d):
            if i != r and rows[i][col] != 0:
                f = rows[i][col]
                rows[i] = [a - f * b for a, b in zip(rows[i], rows[r])]
        pivots.append(col)
        r += 1
        if r == d:
            break
    free = [c for c in range(m) if c not in pivots]
    basis = []
    for fc in free:
        vec = [Fraction(0)] * m
        vec[fc] = Fraction(1)
        for i, pc in enumerate(pivots):
            vec[pc] = -rows[i][fc]
        lcm = math.lcm(*(x.denominator for x in vec))
        ints = [int(x * lcm) for x in vec]
        g = math.gcd(*ints)
        basis.append([x // g for x in ints])
    return basis


def _round_down(value: Fraction) -> float:
    """Largest float <= value, so that ``s <= float`` agrees with ``s <= value`` for every float s."""
    f = float(value)
    if Fraction(f) > value:
        f = float(np.nextafter(f, -np.inf))
    return f


class AtomSolver:
    """Prepared calibration data (scores, exact weights, atoms) answering S*(pattern) exactly.

    Parameters
    ----------
    values : array_like, shape (N,)
        Calibration scores (or coreset means).
    weights : array_like, shape (N,)
        Positive weights: integers (exact) or floats (converted exactly to integers on a power-of-two scale).
    atom_index : array_like of int, shape (N,)
        Row of ``patterns`` each value belongs to.
    patterns : array_like of bool, shape (m, d)
        Group-membership pattern of each atom.
    alpha : float or Fraction
        Miscoverage level, read exactly.
    test_weight : int or float
        Weight of the imputed test point on the same scale as ``weights`` (Σ_k λ_k for GC-FCP).

    Attributes
    ----------
    certificates : dict
        ``{pattern bytes: Certificate}`` for every threshold computed so far; each was checked exactly.
    """

    def __init__(self, values, weights, atom_index, patterns, alpha, test_weight) -> None:
        vals = check_scores(values, name="values")
        w = np.asarray(weights)
        idx = np.asarray(atom_index, dtype=np.int64)
        pats = np.asarray(patterns, dtype=bool)
        if pats.ndim != 2:
            raise ValueError(f"patterns must be 2-dimensional (atoms, groups), got shape {pats.shape}")
        if w.shape != vals.shape or idx.shape != vals.shape:
            raise ValueError(f"mismatched lengths: values={vals.size}, weights={w.size}, atom_index={idx.size}")
        if idx.size and (idx.min() < 0 or idx.max() >= len(pats)):
            raise ValueError(f"atom_index must lie in [0, {len(pats)}), got values in [{idx.min()}, {idx.max()}]")
        if w.dtype.kind in "iu":
            if w.size and w.min() <= 0:
                raise ValueError("weights must be finite and > 0")
        elif w.dtype != object:
            if not np.all(np.isfinite(w.astype(np.float64))) or np.any(w <= 0):
                raise ValueError("weights must be finite and > 0")
        elif any(x <= 0 for x in w):
            raise ValueError("weights must be > 0")
        if not (float(test_weight) > 0 and math.isfinite(float(test_weight))):
            raise ValueError(f"test_weight must be finite and > 0, got {test_weight!r}")
        frac = alpha_fraction(alpha)
        self.alpha = frac
        p, q = frac.numerator, frac.denominator
        self.n_groups = pats.shape[1]
        w_int, (tw,) = exact_integer_weights(w, test_weight)
        if tw <= 0:
            raise ValueError(f"test_weight is too small next to the weights: {test_weight!r}")
        canon: dict[bytes, int] = {}
        remap = np.array([canon.setdefault(p_.tobytes(), i) for i, p_ in enumerate(pats)], dtype=np.int64)
        idx = remap[idx] if idx.size else idx
        # atoms in no group have a fixed fit of 0 and do not interact with the others
        nonzero = pats.any(axis=1)
        if not nonzero.all():
            keep = nonzero[idx]
            idx, vals, w_int = idx[keep], vals[keep], w_int[keep]
        by_value = np.argsort(vals)
        by_atom = idx[by_value]
        if len(pats) <= 2**16:  # a stable sort of 8- or 16-bit keys is a radix sort
            by_atom = by_atom.astype(np.uint8 if len(pats) <= 2**8 else np.uint16)
        order = by_value[np.argsort(by_atom, kind="stable")]  # by atom, then by score
        s_idx, s_vals, s_w = idx[order], vals[order], w_int[order]
        cuts = np.flatnonzero((np.diff(s_idx) != 0) | (np.diff(s_vals) != 0)) + 1
        starts = np.concatenate([[0], cuts]).astype(np.int64) if s_idx.size else np.zeros(0, dtype=np.int64)
        # one entry per distinct (atom, score): summed integer weights
        if s_w.dtype == object:
            sums = np.array([sum(s_w[a:b].tolist()) for a, b in zip(starts.tolist(), np.append(starts[1:], s_w.size).tolist())], dtype=object)
        else:
            sums = np.add.reduceat(s_w, starts) if starts.size else np.zeros(0, dtype=np.int64)
        d_idx, d_vals = s_idx[starts], s_vals[starts]
        atom_cuts = np.flatnonzero(np.diff(d_idx)) + 1
        bounds = np.concatenate([[0], atom_cuts, [d_idx.size]]).astype(np.int64) if d_idx.size else np.zeros(1, dtype=np.int64)
        values_list, weights_q, data_pats = [], [], []
        big = sums.dtype == object or (sums.size and int(sums.max()) * q * max(sums.size, 1) >= 2**62)
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            values_list.append(d_vals[lo:hi])
            ws = sums[lo:hi]
            weights_q.append(ws.astype(object) * q if big else ws.astype(np.int64) * q)
            data_pats.append(pats[d_idx[lo]])
        patt = np.array(data_pats, dtype=bool).reshape(len(data_pats), self.n_groups)
        self._engine = DualSimplex(values_list, weights_q, patt, p, q, tw)
        self._cache: dict[bytes, float] = {}
        self.certificates: dict[bytes, Certificate] = {}

    # ------------------------------------------------------------------ public
    def threshold(self, pattern) -> float:
        """S* for one membership pattern (cached), checked by its exact optimality certificate."""
        pat = np.asarray(pattern, dtype=bool).reshape(-1)
        if pat.size != self.n_groups:
            raise ValueError(f"pattern must have {self.n_groups} entries, got {pat.size}")
        key = pat.tobytes()
        if key not in self._cache:
            if not pat.any():  # a point in no group: every fit is 0 there
                self._cache[key] = 0.0
            else:
                cert = self._engine.solve(pat)
                check_certificate(cert, self._engine, pat)
                self.certificates[key] = cert
                self._cache[key] = math.inf if cert.kind == "unbounded" else _round_down(cert.value)
        return self._cache[key]

    def thresholds(self, patterns) -> np.ndarray:
        """S* for each row of a (m, d) pattern matrix."""
        pats = np.asarray(patterns, dtype=bool)
        return np.array([self.threshold(p) for p in pats], dtype=np.float64)


def atom_thresholds(values, weights, atom_index, patterns, alpha, test_weight, atoms=None) -> np.ndarray:
    """Exact S*(a) for the requested atoms (rows of ``patterns``; default all).

    See :class:`AtomSolver` for the parameters. Atoms of ``patterns`` without calibration data are allowed (for
    patterns first seen at test time); their threshold is ``+inf`` when the data do not constrain them.
    """
    solver = AtomSolver(values, weights, atom_index, patterns, alpha, test_weight)
    pats = np.asarray(patterns, dtype=bool)
    rows = range(len(pats)) if atoms is None else atoms
    return np.array([solver.threshold(pats[i]) for i in rows], dtype=np.float64)
