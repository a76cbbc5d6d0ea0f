"""Exact per-atom thresholds of the weighted augmented quantile regression (GC-FCP problems (10) and (22)).

The regression uses group-indicator features, so it depends on a test point only through its membership pattern
(atom). The largest admissible test score is therefore one number per atom (ALGORITHMS.md §4, §9):

    S*(a) = min { θ_a : θ ∈ argmin_{θ ∈ range(P)} Σ_b f_b(θ_b) - u θ_a },   u = (1 - α) w_test,

where θ_b = Φ_bᵀβ is the fitted value at atom b, P stacks the atom patterns and
f_b(θ) = Σ_{i in b} w_i ℓ_α(S_i - θ) is the pinball loss of atom b. A label y is in the set of a test point in
atom a iff ``s(x, y) <= S*(a)``.

Writing the constraint θ ∈ range(P) as Nᵀθ = 0 (N spans the left null space of P), the KKT conditions say that
θ_b is a weighted quantile of atom b's scores at level ``(1 - α)(W_b + w_test·1{b = a}) - (Nτ)_b``. When the left
null space has dimension r <= 1 (disjoint groups, chains of overlapping intervals, the paper's CIFAR-10 and
PathMNIST groups, any family plus the whole space in those cases) the multiplier τ is found by a monotone search
over the finitely many breakpoints, and every comparison is made in exact integer / rational arithmetic: float
weights are converted to integers on a common power-of-two scale, α is read as an exact decimal. No tolerance is
involved, so the result is the exact solution for the given inputs (rounded down to the nearest float when it is a
combination of several scores). For r >= 2 an LP (HiGHS) fallback is used and reported as such
(``AtomSolver.inexact_atoms``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .validation import alpha_fraction, check_scores

__all__ = ["AtomSolver", "atom_thresholds", "exact_integer_weights", "left_null_space"]

_INT64_SAFE = 2**62


class LPFallbackWarning(UserWarning):
    """Thresholds for a group family with a left null space of dimension >= 2 come from an LP (not exact)."""


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


@dataclass
class _Atom:
    values: np.ndarray  # distinct scores, increasing (float64)
    cum: np.ndarray  # cumulative integer weight at each distinct score
    total: int


class _Interval:
    """Closed interval of reals between two floats (None = infinite); exact ends are Fractions on demand."""

    __slots__ = ("flo", "fhi")

    def __init__(self, lo: float | None, hi: float | None) -> None:
        self.flo, self.fhi = lo, hi

    @property
    def lo(self) -> Fraction | None:
        return None if self.flo is None else Fraction(self.flo)

    @property
    def hi(self) -> Fraction | None:
        return None if self.fhi is None else Fraction(self.fhi)

    def scaled(self, k: int) -> "_Exact":
        lo, hi = self.lo, self.hi
        lo = None if lo is None else lo * k
        hi = None if hi is None else hi * k
        return _Exact(lo, hi) if k > 0 else _Exact(hi, lo)


class _Exact:
    """Closed interval with exact Fraction ends (None = infinite)."""

    __slots__ = ("lo", "hi")

    def __init__(self, lo: Fraction | None, hi: Fraction | None) -> None:
        self.lo, self.hi = lo, hi


def _sum_ends(ends: list[Fraction | None]) -> Fraction | None:
    return None if any(e is None for e in ends) else sum(ends, Fraction(0))


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
        if w.dtype != object:
            if not np.all(np.isfinite(w.astype(np.float64))) or np.any(w <= 0):
                raise ValueError("weights must be finite and > 0")
        elif any(x <= 0 for x in w):
            raise ValueError("weights must be > 0")
        if not (float(test_weight) > 0 and math.isfinite(float(test_weight))):
            raise ValueError(f"test_weight must be finite and > 0, got {test_weight!r}")
        frac = alpha_fraction(alpha)
        self.alpha = frac
        self._p, self._q = frac.numerator, frac.denominator
        self.n_groups = pats.shape[1]
        w_int, (tw,) = exact_integer_weights(w, test_weight)
        self._test_weight = tw
        self._atoms: dict[bytes, _Atom] = {}
        self._data_patterns: list[np.ndarray] = []
        canon: dict[bytes, int] = {}
        remap = np.array([canon.setdefault(p.tobytes(), i) for i, p in enumerate(pats)], dtype=np.int64)
        idx = remap[idx] if idx.size else idx
        order = np.lexsort((vals, idx))
        s_idx, s_vals, s_w = idx[order], vals[order], w_int[order]
        bounds = np.flatnonzero(np.diff(s_idx)) + 1
        starts = np.concatenate([[0], bounds]).astype(np.int64)
        ends = np.concatenate([bounds, [s_idx.size]]).astype(np.int64)
        for lo, hi in zip(starts.tolist(), ends.tolist()):
            if hi <= lo:
                continue
            v, cw = s_vals[lo:hi], np.cumsum(s_w[lo:hi])
            keep = np.concatenate([np.flatnonzero(np.diff(v) != 0), [v.size - 1]])
            pattern = pats[s_idx[lo]]
            self._atoms[pattern.tobytes()] = _Atom(values=v[keep], cum=cw[keep], total=int(cw[-1]))
            self._data_patterns.append(pattern)
        self._null_cache: dict[bytes, list[list[int]]] = {}
        self._cache: dict[bytes, float] = {}
        self.inexact_atoms: set[bytes] = set()

    # ------------------------------------------------------------------ public
    def threshold(self, pattern) -> float:
        """S* for one membership pattern (cached)."""
        pat = np.asarray(pattern, dtype=bool).reshape(-1)
        if pat.size != self.n_groups:
            raise ValueError(f"pattern must have {self.n_groups} entries, got {pat.size}")
        key = pat.tobytes()
        if key not in self._cache:
            self._cache[key] = self._solve(pat)
        return self._cache[key]

    def thresholds(self, patterns) -> np.ndarray:
        """S* for each row of a (m, d) pattern matrix."""
        pats = np.asarray(patterns, dtype=bool)
        return np.array([self.threshold(p) for p in pats], dtype=np.float64)

    # ------------------------------------------------------------------ internals
    def _active(self, pat: np.ndarray) -> tuple[list[bytes], list[np.ndarray]]:
        # atoms in no group have a fixed fit of 0 and do not interact with the others
        pats = [p for p in self._data_patterns if p.any()]
        keys = [p.tobytes() for p in pats]
        if pat.tobytes() not in self._atoms:
            keys.append(pat.tobytes())
            pats.append(pat)
        return keys, pats

    def _solve(self, pat: np.ndarray) -> float:
        if not pat.any():  # a point in no group: every fit is 0 there
            return 0.0
        keys, pats = self._active(pat)
        a_key = pat.tobytes()
        cache_key = b"".join(sorted(keys))
        if cache_key not in self._null_cache:
            self._null_cache[cache_key] = left_null_space(np.array(pats))
        basis = self._null_cache[cache_key]
        a_pos = keys.index(a_key)
        if len(basis) >= 2:
            return self._solve_lp(pat, keys, pats)
        if not basis or basis[0][a_pos] == 0:
            return self._decoupled(a_key)
        return self._coupled(a_key, keys, basis[0])

    def _level(self, total: int, is_test: bool) -> int:
        """q·(1 - α)(W + w_test·1{test}) as an integer."""
        return (self._q - self._p) * (total + (self._test_weight if is_test else 0))

    def _decoupled(self, a_key: bytes) -> float:
        """θ_a is free of the coupling: the weighted split-CP rule inside atom a."""
        atom = self._atoms.get(a_key)
        if atom is None:  # no data and unconstrained: the objective -u·θ_a is unbounded
            return math.inf
        level = self._level(atom.total, True)
        j = int(np.searchsorted(_mul(atom.cum, self._q), level, side="left"))
        return math.inf if j >= atom.values.size else float(atom.values[j])

    def _coupled(self, a_key: bytes, keys: list[bytes], n: list[int]) -> float:
        """One-dimensional multiplier search (left null space spanned by the integer vector n, n_a != 0)."""
        support = [(k, nb) for k, nb in zip(keys, n) if nb != 0]
        mult = math.lcm(*(abs(nb) for _, nb in support))
        scale = mult * self._q
        # For atom b the KKT level in integer units is A_b - n_b·t; t is the scaled multiplier. Every breakpoint
        # (A_b - scaled cumulative weight)/n_b is an exact integer because mult is a multiple of n_b.
        terms = []
        t_lo, t_hi = -math.inf, math.inf
        for k, nb in support:
            atom = self._atoms.get(k)
            total = atom.total if atom is not None else 0
            a_b = mult * self._level(total, k == a_key)
            cum = _mul(atom.cum, scale) if atom is not None else np.zeros(0, dtype=np.int64)
            terms.append((k, nb, a_b, cum, atom))
            ends = sorted([(a_b - total * scale) // nb, a_b // nb])
            t_lo, t_hi = max(t_lo, ends[0]), min(t_hi, ends[1])
        if t_lo > t_hi:
            return math.inf  # dual infeasible: the fit at atom a follows the imputed score to +inf
        ends = [t_lo, t_hi] + [a_b // nb for _, nb, a_b, cum, _ in terms if cum.size]
        small = all(abs(int(x)) < _INT64_SAFE for x in ends) and all(
            cum.dtype != object and abs(a_b) < _INT64_SAFE for _, _, a_b, cum, _ in terms
        )
        kind = np.int64 if small else object  # int64 sorts ~20x faster than Python ints
        pieces = [np.array(ends, dtype=kind)]
        pieces += [((a_b - cum) // nb).astype(kind) for _, nb, a_b, cum, _ in terms if cum.size]
        grid = np.sort(np.concatenate(pieces))  # duplicates are harmless for the bisection
        grid = grid[(grid >= t_lo) & (grid <= t_hi)]

        def intervals(t: int) -> list[_Interval]:
            return [_quantile_interval(atom, cum, a_b - nb * t) for _, nb, a_b, cum, atom in terms]

        def total_range(ivs: list[_Interval], skip: int | None = None) -> tuple[Fraction | None, Fraction | None]:
            scaled = [iv.scaled(nb) for i, (iv, (_, nb, *_)) in enumerate(zip(ivs, terms)) if i != skip]
            return _sum_ends([s.lo for s in scaled]), _sum_ends([s.hi for s in scaled])

        def sign_range(ivs: list[_Interval]) -> tuple[int | None, int | None]:
            """Signs of min and max of Σ n_b θ_b (None = infinite); float first, exact only near 0."""
            lo_terms, hi_terms = [], []
            for iv, (_, nb, *_) in zip(ivs, terms):
                a, b = iv.flo, iv.fhi
                lo_terms.append(None if (a if nb > 0 else b) is None else nb * (a if nb > 0 else b))
                hi_terms.append(None if (b if nb > 0 else a) is None else nb * (b if nb > 0 else a))
            signs = []
            for which, vals in ((0, lo_terms), (1, hi_terms)):
                if any(v is None for v in vals):
                    signs.append(None)
                    continue
                total = math.fsum(vals)
                # each product nb·v carries at most half an ulp of error; fsum adds none of its own
                if abs(total) > 4 * sum(abs(v) for v in vals) * 2.0**-52:
                    signs.append(1 if total > 0 else -1)
                else:
                    exact = total_range(ivs)[which]
                    signs.append((exact > 0) - (exact < 0))
            return signs[0], signs[1]

        lo_i, hi_i, found = 0, len(grid) - 1, None
        while lo_i <= hi_i:  # Σ n_b θ_b(t) is non-increasing in t: bisect for the t where it can be 0
            mid = (lo_i + hi_i) // 2
            ivs = intervals(int(grid[mid]))
            g_lo, g_hi = sign_range(ivs)
            if g_hi is not None and g_hi < 0:
                hi_i = mid - 1
            elif g_lo is not None and g_lo > 0:
                lo_i = mid + 1
            else:
                found = ivs
                break
        if found is None:  # cannot happen for a bounded problem; keep the full set rather than guess
            warnings.warn("exact solver found no dual multiplier; returning +inf", RuntimeWarning, stacklevel=3)
            return math.inf
        a_pos = next(i for i, term in enumerate(terms) if term[0] == a_key)
        n_a = terms[a_pos][1]
        rest_lo, rest_hi = total_range(found, skip=a_pos)
        # n_a·θ_a = -(Σ_{b != a} n_b θ_b): the smallest θ_a compatible with the other atoms' intervals
        if n_a > 0:
            from_rest = None if rest_hi is None else -rest_hi / n_a
        else:
            from_rest = None if rest_lo is None else -rest_lo / n_a
        lows = [x for x in (from_rest, found[a_pos].lo) if x is not None]
        return _round_down(max(lows)) if lows else -math.inf

    def _solve_lp(self, pat: np.ndarray, keys: list[bytes], pats: list[np.ndarray]) -> float:
        from scipy.optimize import linprog
        from scipy.sparse import coo_matrix, hstack

        self.inexact_atoms.add(pat.tobytes())
        warnings.warn(
            "group family has a left null space of dimension >= 2 for this atom: threshold from an LP (HiGHS), "
            "accurate to solver tolerance, not certified exact",
            LPFallbackWarning,
            stacklevel=3,
        )
        alpha = float(self.alpha)
        vals, ws, rows = [], [], []
        for k, p in zip(keys, pats):
            atom = self._atoms.get(k)
            if atom is None:
                continue
            vals.append(atom.values)
            ws.append(np.diff(np.concatenate([[0], np.array([int(c) for c in atom.cum], dtype=object)])).astype(float))
            rows.append(np.repeat(p[None, :], atom.values.size, axis=0))
        v = np.concatenate(vals)
        w = np.concatenate(ws)
        phi = np.concatenate(rows).astype(float)
        norm = w.sum() + float(self._test_weight)
        w = w / norm
        u = (1 - alpha) * float(self._test_weight) / norm
        n, d = phi.shape
        # variables: beta (d, free), plus (n), minus (n) >= 0 with v - phi beta = plus - minus
        c = np.concatenate([-u * pat.astype(float), (1 - alpha) * w, alpha * w])
        eye = coo_matrix((np.ones(n), (np.arange(n), np.arange(n))), shape=(n, n))
        a_eq = hstack([coo_matrix(phi), eye, -eye]).tocsr()
        bounds = [(None, None)] * d + [(0, None)] * (2 * n)
        tight = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}
        res = linprog(c, A_eq=a_eq, b_eq=v, bounds=bounds, method="highs", options=tight)
        if res.status == 3:
            return math.inf
        if res.status != 0:
            raise RuntimeError(f"LP fallback failed: {res.message}")
        opt = res.fun
        c2 = np.concatenate([pat.astype(float), np.zeros(2 * n)])
        res2 = linprog(
            c2, A_ub=c[None, :], b_ub=[opt + 1e-12 * max(1.0, abs(opt))], A_eq=a_eq, b_eq=v, bounds=bounds,
            method="highs", options=tight,
        )
        if res2.status != 0:
            return float(pat.astype(float) @ res.x[:d])
        return float(res2.fun)


def _mul(arr: np.ndarray, k: int) -> np.ndarray:
    """Exact integer product, switching to Python ints when int64 could overflow."""
    if arr.dtype != object and (arr.size == 0 or int(np.abs(arr).max()) * abs(k) < _INT64_SAFE):
        return arr * k
    return arr.astype(object) * k


def _quantile_interval(atom: _Atom | None, cum: np.ndarray, level: int) -> _Interval:
    """Set of θ with W_<(θ) <= level <= W_<=(θ) (weights in the same scaled integer units as ``cum``)."""
    if atom is None:  # atom with no data: the level must be 0 and θ is free
        return _Interval(None, None)
    values = atom.values
    if level == 0:
        return _Interval(None, float(values[0]))
    if level == cum[-1]:
        return _Interval(float(values[-1]), None)
    j = int(np.searchsorted(cum, level, side="left"))
    v = float(values[j])
    if cum[j] == level:
        return _Interval(v, float(values[j + 1]))
    return _Interval(v, v)


def atom_thresholds(values, weights, atom_index, patterns, alpha, test_weight, atoms=None) -> np.ndarray:
    """Exact S*(a) for the requested atoms (rows of ``patterns``; default all).

    See :class:`AtomSolver` for the parameters. Atoms of ``patterns`` without calibration data are allowed (for
    patterns first seen at test time); their threshold is ``+inf`` when the data do not constrain them.
    """
    solver = AtomSolver(values, weights, atom_index, patterns, alpha, test_weight)
    pats = np.asarray(patterns, dtype=bool)
    rows = range(len(pats)) if atoms is None else atoms
    return np.array([solver.threshold(pats[i]) for i in rows], dtype=np.float64)
