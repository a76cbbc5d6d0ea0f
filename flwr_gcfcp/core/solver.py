"""Exact per-atom thresholds of the weighted augmented quantile regression (GC-FCP problems (10) and (22)).

The regression uses group-indicator features, so it depends on a test point only through its membership pattern
(atom). The largest admissible test score is therefore one number per atom (ALGORITHMS.md §4, §9):

    S*(a) = min { θ_a : θ ∈ argmin_{θ ∈ range(P)} Σ_b f_b(θ_b) - u θ_a },   u = (1 - α) w_test,

where θ_b = Φ_bᵀβ is the fitted value at atom b, P stacks the atom patterns and
f_b(θ) = Σ_{i in b} w_i ℓ_α(S_i - θ) is the pinball loss of atom b. A label y is in the set of a test point in
atom a iff ``s(x, y) <= S*(a)``.

Writing the constraint θ ∈ range(P) as Nᵀθ = 0 (N spans the left null space of P, rank r), the KKT conditions say
that θ_b is a weighted quantile of atom b's scores at level ``(1 - α)(W_b + w_test·1{b = a}) - (Nτ)_b``. Row b of N
is ``s_b·d_D`` for a primitive integer direction d_D; atoms sharing a direction form a class whose levels move with
the single scalar ``z_D = d_D·τ``, and ``Σ_{b∈D} s_b θ_b`` is monotone in z_D. With k classes the z's obey k - r
linear relations. For k = r (disjoint groups, chains of overlapping intervals, the paper's CIFAR-10 groups) every
class is solved by its own monotone search over its finitely many breakpoints; for k = r + 1 (the paper's PathMNIST
groups: r = 2, three directions) one more monotone search on the relation's multiplier couples the classes. Every
comparison is made in exact integer / rational arithmetic (float weights are converted to integers on a common
power-of-two scale, α is read as an exact decimal, float sums are only trusted away from zero), so the result is
the exact solution for the given inputs, rounded down to the nearest float when it is a combination of several
scores. Families with more relations fall back to an LP (HiGHS), reported in ``AtomSolver.inexact_atoms`` and by
an ``LPFallbackWarning``.
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
        if not basis or all(vec[a_pos] == 0 for vec in basis):
            return self._decoupled(a_key)
        result = self._by_directions(a_key, keys, basis)
        if result is None:  # more than one relation between the direction classes
            return self._solve_lp(pat, keys, pats)
        return result

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

    def _by_directions(self, a_key: bytes, keys: list[bytes], basis: list[list[int]]) -> float | None:
        """Exact KKT solution when the atoms' null-space rows span directions with at most one relation.

        Row b of the null-space basis N is n_b = s_b·d_D for a primitive direction d_D; atoms sharing a direction form
        a class whose KKT levels move with one scalar z_D = d_D·τ. With k classes and rank r, the z's obey k - r
        relations. k = r: each class solves its own monotone problem Σ_{b∈D} s_b θ_b = 0. k = r + 1: the single
        relation m gives Σ_{b∈D} s_b θ_b = μ·m_D, and a monotone search on μ couples the classes. Returns None for
        more relations (LP fallback).
        """
        r = len(basis)
        classes: dict[tuple[int, ...], list[tuple[bytes, int]]] = {}
        for pos, key in enumerate(keys):
            row = [vec[pos] for vec in basis]
            if not any(row):
                continue
            g = math.gcd(*row)
            direction = tuple(x // g for x in row)
            if next(x for x in direction if x) < 0:
                direction, g = tuple(-x for x in direction), -g
            classes.setdefault(direction, []).append((key, g))
        directions = list(classes)
        relations = left_null_space(np.array(directions, dtype=np.int64)) if len(directions) > r else []
        if len(relations) > 1:
            return None
        mult = math.lcm(*(abs(s) for members in classes.values() for _, s in members))
        scale = mult * self._q
        built = []
        for direction, members in classes.items():
            terms = []
            for key, s in members:
                atom = self._atoms.get(key)
                total = atom.total if atom is not None else 0
                a_b = mult * self._level(total, key == a_key)
                cum = _mul(atom.cum, scale) if atom is not None else np.zeros(0, dtype=np.int64)
                terms.append(_Term(key, s, a_b, cum, atom))
            built.append(_DirectionClass(terms))
        if any(c.empty for c in built):
            return math.inf  # dual infeasible: the fit at atom a follows the imputed score to +inf
        if not relations:
            zs = [c.solve(Fraction(0)) for c in built]
            if any(z is None for z in zs):
                return math.inf
            mu_range = None
            rel = [0] * len(built)
        else:
            rel = relations[0]
            found = _solve_relation(built, rel)
            if found is None:
                return math.inf
            zs, mu_range = found
        # primal optimal set at the dual solution: θ_b ∈ I_b(z_D), Σ_{b∈D} s_b θ_b = μ·m_D, μ in mu_range
        a_class = next(i for i, c in enumerate(built) if any(t.key == a_key for t in c.terms))
        cls = built[a_class]
        ivs = cls.intervals(zs[a_class])
        a_idx = next(i for i, t in enumerate(cls.terms) if t.key == a_key)
        s_a = cls.terms[a_idx].s
        rest_lo = _sum_ends([iv.scaled(t.s).lo for i, (iv, t) in enumerate(zip(ivs, cls.terms)) if i != a_idx])
        rest_hi = _sum_ends([iv.scaled(t.s).hi for i, (iv, t) in enumerate(zip(ivs, cls.terms)) if i != a_idx])
        if mu_range is None:
            y_lo = y_hi = Fraction(0)
        else:
            m_a = rel[a_class]
            lo, hi = mu_range
            if m_a == 0:
                lo = hi = Fraction(0)
            elif m_a < 0:
                lo, hi = hi, lo
            y_lo = None if lo is None else lo * m_a
            y_hi = None if hi is None else hi * m_a
        # s_a·θ_a = y - rest with y ∈ [y_lo, y_hi], rest ∈ [rest_lo, rest_hi]
        num_lo = None if (y_lo is None or rest_hi is None) else y_lo - rest_hi
        num_hi = None if (y_hi is None or rest_lo is None) else y_hi - rest_lo
        bound = (None if num_lo is None else num_lo / s_a) if s_a > 0 else (None if num_hi is None else num_hi / s_a)
        lows = [x for x in (bound, ivs[a_idx].lo) if x is not None]
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


@dataclass
class _Term:
    key: bytes
    s: int  # n_b = s·d_D
    a_b: int  # scaled (1 - α)(W_b + w_test·1{b = a})
    cum: np.ndarray  # scaled cumulative weights
    atom: "_Atom | None"

    def interval(self, z) -> "_Interval":
        level = self.a_b - self.s * z
        if isinstance(level, Fraction):
            if level.denominator == 1:
                level = level.numerator
            else:  # strictly between two integer cumulative weights: a single score
                if self.atom is None:
                    return _Interval(None, None)
                j = int(np.searchsorted(self.cum, math.ceil(level), side="left"))
                v = float(self.atom.values[j])
                return _Interval(v, v)
        return _quantile_interval(self.atom, self.cum, level)


class _DirectionClass:
    """Atoms whose KKT levels move with one scalar z: level_b(z) = a_b - s_b·z (integer units).

    Y(z) = Σ_b s_b·I_b(z) is non-increasing in z; every breakpoint is an integer.
    """

    def __init__(self, terms: list[_Term]) -> None:
        self.terms = terms
        lo, hi = -math.inf, math.inf
        for t in terms:
            top = int(t.cum[-1]) if t.cum.size else 0
            ends = sorted([(t.a_b - top) // t.s, t.a_b // t.s])
            lo, hi = max(lo, ends[0]), min(hi, ends[1])
        self.zlo, self.zhi = lo, hi
        self.empty = lo > hi
        if self.empty:
            self.grid = np.zeros(0, dtype=np.int64)
            return
        ends = [lo, hi] + [t.a_b // t.s for t in terms if t.cum.size]
        small = all(abs(int(x)) < _INT64_SAFE for x in ends) and all(
            t.cum.dtype != object and abs(t.a_b) < _INT64_SAFE for t in terms
        )
        kind = np.int64 if small else object  # int64 sorts ~20x faster than Python ints
        pieces = [np.array(ends, dtype=kind)] + [((t.a_b - t.cum) // t.s).astype(kind) for t in terms if t.cum.size]
        grid = np.sort(np.concatenate(pieces))  # duplicates are harmless for the bisections
        self.grid = grid[(grid >= lo) & (grid <= hi)]

    def intervals(self, z) -> list["_Interval"]:
        return [t.interval(z) for t in self.terms]

    def compare(self, z, y: Fraction, fy: float | None = None, ey: float | None = None) -> tuple[int, int]:
        """Signs of (min Y(z) - y, max Y(z) - y); an infinite end counts as -1 / +1.

        ``fy``/``ey`` (float(y) and its rounding error) may be passed in by callers that compare one y many times.
        """
        if fy is None:
            fy = float(y)
            ey = abs(Fraction(fy) - y) if y.denominator != 1 else 0.0
        ivs = self.intervals(z)
        out = []
        for want_low in (True, False):
            vals = []
            for iv, t in zip(ivs, self.terms):
                end = (iv.flo if t.s > 0 else iv.fhi) if want_low else (iv.fhi if t.s > 0 else iv.flo)
                if end is None:
                    vals = None
                    break
                vals.append((t.s, end))
            if vals is None:
                out.append(-1 if want_low else 1)
                continue
            total = math.fsum(s * v for s, v in vals) - fy
            err = 4 * (sum(abs(s * v) for s, v in vals) + abs(fy)) * 2.0**-52 + ey
            if abs(total) > err:
                out.append(1 if total > 0 else -1)
            else:
                exact = sum((Fraction(v) * s for s, v in vals), Fraction(0)) - y
                out.append((exact > 0) - (exact < 0))
        return out[0], out[1]

    def y_range(self, z) -> tuple[Fraction | None, Fraction | None]:
        ivs = self.intervals(z)
        scaled = [iv.scaled(t.s) for iv, t in zip(ivs, self.terms)]
        return _sum_ends([s.lo for s in scaled]), _sum_ends([s.hi for s in scaled])

    def z_range(self, y: Fraction) -> tuple[object, object]:
        """[z1, z2] = {z : y ∈ Y(z)} on the grid's hull; z1 = +inf / z2 = -inf mark y out of range."""
        grid = self.grid
        y = Fraction(y)
        fy = float(y)
        ey = float(abs(Fraction(fy) - y)) if y.denominator != 1 else 0.0
        # z1: first grid point with min Y <= y (holds from z1 on, Y being non-increasing)
        lo_i, hi_i = 0, len(grid)
        while lo_i < hi_i:
            mid = (lo_i + hi_i) // 2
            if self.compare(int(grid[mid]), y, fy, ey)[0] <= 0:
                hi_i = mid
            else:
                lo_i = mid + 1
        z1 = int(grid[lo_i]) if lo_i < len(grid) else math.inf
        # z2: last grid point with max Y >= y
        lo_i, hi_i = -1, len(grid) - 1
        while lo_i < hi_i:
            mid = (lo_i + hi_i + 1) // 2
            if self.compare(int(grid[mid]), y, fy, ey)[1] >= 0:
                lo_i = mid
            else:
                hi_i = mid - 1
        z2 = int(grid[lo_i]) if lo_i >= 0 else -math.inf
        return z1, z2

    def solve(self, y: Fraction):
        """A z with y ∈ Y(z), or None."""
        z1, z2 = self.z_range(y)
        if z1 == math.inf or z2 == -math.inf or z1 > z2:
            return None
        return z1

    def candidates(self) -> np.ndarray:
        """Float values of the ends of Y at every grid point (where the inverse z(y) can jump), vectorised."""
        grid = self.grid
        lo_sum = np.zeros(len(grid))
        hi_sum = np.zeros(len(grid))
        for t in self.terms:
            if t.atom is None:  # I = R at the single admissible z: no finite end
                return np.zeros(0)
            values = t.atom.values
            last = values.size - 1
            level = t.a_b - t.s * grid
            j = np.minimum(np.searchsorted(t.cum, level, side="left"), last)
            hit = t.cum[j] == level
            lo = values[j].astype(np.float64)
            hi = np.where(hit & (j < last), values[np.minimum(j + 1, last)], lo)
            lo = np.where(level == 0, -np.inf, lo)
            hi = np.where(level == t.cum[-1], np.inf, hi)
            if t.s > 0:
                lo_sum += t.s * lo
                hi_sum += t.s * hi
            else:
                lo_sum += t.s * hi
                hi_sum += t.s * lo
        return np.concatenate([lo_sum, hi_sum])


def _solve_relation(classes: list[_DirectionClass], rel: list[int]):
    """Monotone search for μ with 0 ∈ Σ_D m_D·Z_D(μ·m_D); returns (z per class, μ interval) or None."""

    def total(mu: Fraction):
        lo = hi = Fraction(0)
        ranges = []
        for cls, m in zip(classes, rel):
            if m == 0:
                z = cls.solve(Fraction(0))
                if z is None:
                    return None, None, None
                ranges.append((z, z))
                continue
            z1, z2 = cls.z_range(mu * m)
            ranges.append((z1, z2))
            a, b = (z1, z2) if m > 0 else (z2, z1)
            lo = lo + (a * m if math.isfinite(a) else (math.inf if a * m > 0 else -math.inf)) if lo is not None else None
            hi = hi + (b * m if math.isfinite(b) else (math.inf if b * m > 0 else -math.inf)) if hi is not None else None
        return lo, hi, ranges

    parts, owners, zs_of = [], [], []
    for ci, (c, m) in enumerate(zip(classes, rel)):
        if m == 0:
            continue
        vals = c.candidates() / m
        parts.append(vals)
        owners.append(np.full(vals.size, ci))
        zs_of.append(np.concatenate([c.grid, c.grid]) if vals.size else np.zeros(0, dtype=np.int64))
    cands = np.concatenate(parts) if parts else np.zeros(0)
    owner = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)
    zsrc = np.concatenate([z.astype(object) for z in zs_of]) if zs_of else np.zeros(0, dtype=object)
    keep = np.isfinite(cands)
    cands, owner, zsrc = cands[keep], owner[keep], zsrc[keep]
    order = np.argsort(cands, kind="stable")
    cands, owner, zsrc = cands[order], owner[order], zsrc[order]
    if cands.size == 0:  # every coupled class is unconstrained in y: any μ, try 0
        cands = np.zeros(1)
    found, (lo_i, hi_i) = _bisect_mu([Fraction(float(c)) for c in cands] if cands.size < 64 else _LazyFractions(cands), total)
    if found is None and owner.size:
        # the root sits on a jump whose float image missed it: recompute the nearby candidates exactly
        near_mask = np.zeros(cands.size, dtype=bool)
        for pivot in {cands[min(max(i, 0), len(cands) - 1)] for i in (hi_i, lo_i)}:  # the failed bracket's ends
            near_mask |= np.abs(cands - pivot) <= 1e-9 * (1.0 + abs(pivot))
        pairs = [(int(owner[i]), zsrc[i]) for i in np.flatnonzero(near_mask).tolist()]
        found, _ = _bisect_mu(_exact_candidates(classes, rel, pairs), total)
    if found is None:  # still nothing: every candidate exactly (slow, kept for safety)
        pairs = [(ci, z) for ci, (c, m) in enumerate(zip(classes, rel)) if m != 0 for z in c.grid.tolist()]
        found, _ = _bisect_mu(_exact_candidates(classes, rel, pairs), total)
    if found is None or found == "infeasible":
        return None
    ranges = found
    # choose z's in the ranges with Σ m_D z_D = 0 (exact), then the μ interval compatible with those z's
    zs = _pick_zs(ranges, rel)
    mu_lo, mu_hi = None, None
    for cls, m, z in zip(classes, rel, zs):
        if m == 0:
            continue
        y_lo, y_hi = cls.y_range(z)
        a = None if y_lo is None else y_lo / m
        b = None if y_hi is None else y_hi / m
        if m < 0:
            a, b = b, a
        mu_lo = a if mu_lo is None else (mu_lo if a is None else max(mu_lo, a))
        mu_hi = b if mu_hi is None else (mu_hi if b is None else min(mu_hi, b))
    return zs, (mu_lo, mu_hi)


class _LazyFractions:
    """Sorted float candidates read as exact Fractions on access (a bisection touches only log n of them)."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> Fraction:
        return Fraction(float(self.values[i]))


def _exact_candidates(classes, rel, pairs) -> list[Fraction]:
    """Exact μ candidates: the ends of Y_D(z)/m_D for the given (class index, grid z) pairs, sorted."""
    out = set()
    for ci, z in pairs:
        for end in classes[ci].y_range(int(z)):
            if end is not None:
                out.add(end / rel[ci])
    return sorted(out)


def _bisect_mu(mus, total):
    """Bisect sorted μ candidates for 0 ∈ Σ_D m_D Z_D(μ) (non-increasing in μ).

    Returns (z ranges, or "infeasible" when a class without a relation term has no solution, or None) and the final
    bracket indices.
    """
    lo_i, hi_i = 0, len(mus) - 1
    while lo_i <= hi_i:
        mid = (lo_i + hi_i) // 2
        lo, hi, ranges = total(mus[mid])
        if lo is None:
            return "infeasible", (lo_i, hi_i)
        if lo > 0:
            lo_i = mid + 1
        elif hi < 0:
            hi_i = mid - 1
        else:
            return ranges, (lo_i, hi_i)
    return None, (lo_i, hi_i)


def _pick_zs(ranges, rel) -> list:
    """z_D in [z1_D, z2_D] with Σ m_D z_D = 0 (rational z's allowed between grid points)."""
    zs = [Fraction(a if m >= 0 else b) if m != 0 else Fraction(a) for (a, b), m in zip(ranges, rel)]
    deficit = -sum(m * z for m, z in zip(rel, zs))
    for i, ((a, b), m) in enumerate(zip(ranges, rel)):
        if deficit == 0:
            break
        if m == 0:
            continue
        room = (b - a) * abs(m)
        step = min(deficit, room) if deficit > 0 else 0
        zs[i] += Fraction(step) / m
        deficit -= step
    return [int(z) if z.denominator == 1 else z for z in zs]


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
