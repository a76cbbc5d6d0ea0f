"""Exact dual simplex over atoms for the per-atom GC-FCP thresholds, with a checkable optimality certificate.

Problem (ALGORITHMS.md §9). Atoms b carry sorted distinct scores v_b[0..K_b-1] with positive integer weights; the
fitted value at b is θ_b = Φ_bᵀβ. In *level* units (every weight multiplied by q, α = p/q) write
C_b[k] = q·(weight of the k smallest scores of b) and L_b = (q - p)(W_b + w_test·1{b = a}). The KKT conditions of

    min_β Σ_b f_b(Φ_bᵀβ) - u·Φ_aᵀβ,    f_b(θ) = Σ_{i∈b} w_i ℓ_α(S_i - θ),  u = (1 - α) w_test,

are: levels c_b with Σ_b Φ_b c_b = Σ_b Φ_b L_b and W_<(θ_b) <= c_b <= W_<=(θ_b) (q·weight of b's scores below θ_b,
resp. at or below). S*(a) is the *lowest* optimal θ_a. Lowering u by an infinitesimal ε selects it: a solution that
is optimal for every u - ε, ε in (0, ε0], is optimal for u and has the least θ_a among optima. So levels are pairs
c = c⁰ + ε c¹ compared lexicographically, with Σ Φ_b c¹_b = -Φ_a.

Algorithm: dual simplex in β-space. A basis is r atoms with independent patterns (r = rank), each fixed at one of
its scores; β follows exactly; every other atom's level is read off its θ (dual feasibility holds by
construction). The basic levels follow from the equality constraint; if one leaves its box [C[k], C[k+1]], that
atom leaves the basis and β moves along the edge that frees it, with a long-step line search over all the
breakpoints the moving atoms cross (the objective along the edge is convex piecewise linear). Any basis is a
dual-feasible start (only the levels change between targets), so a fit of all atoms costs a few pivots each: with
one relation between the patterns a float search along the line of levels places each target's start next to its
optimum (:meth:`DualSimplex._relation_start`); otherwise every target starts from the optimum without the test
point. Floats only order the candidate breakpoints and
place starts; every quantity that decides optimality is an integer or a rational, and the final state is verified
by :func:`check_certificate`, which is independent of how the state was found:

* optimal: β (rationals), the levels (c⁰, c¹); checked: θ = Φβ for every atom, Σ Φ_b (c⁰_b - L_b) = 0 and
  Σ Φ_b c¹_b = -Φ_a over all d groups, and W_<(θ_b) <= c_b <= W_<=(θ_b) lexicographically for every atom;
* unbounded (S* = +inf): a direction δ (integers) along which the objective decreases without bound:
  Σ_b g_b (q W_b·1{g_b > 0} - L_b) < 0 with g = Φδ (the fitted value at the target follows the imputed score up).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from operator import mul

import numpy as np

__all__ = ["Certificate", "CertificateError", "DualSimplex", "check_certificate"]

_INT64_SAFE = 2**62
_INT50 = 2**50
_UNIT = 2.0**-53  # unit roundoff of float64
_GRID = np.linspace(0.0, 1.0, 33)  # search grid of DualSimplex._relation_brackets


class CertificateError(RuntimeError):
    """The exact optimality check of a threshold failed (never expected: a bug, reported instead of a value)."""


@dataclass
class Certificate:
    """Proof that a threshold is exact, checkable with :func:`check_certificate`.

    Attributes
    ----------
    kind : str
        ``"optimal"`` (finite S*) or ``"unbounded"`` (S* = +inf).
    target : int
        Index of the target atom among the engine's atoms.
    beta : dict
        ``{group: int}``: numerators of the coefficients β over ``den`` (optimal), or the direction δ (unbounded).
    den : int
        Positive common denominator of β (1 for a direction).
    levels0, levels1 : list of int
        Numerators of the levels c⁰, c¹ per atom over ``level_den`` (optimal only; empty otherwise).
    level_den : int
        Positive common denominator of the levels.
    value : Fraction or None
        The exact fitted value θ_a = Φ_aᵀβ at the target (optimal only).
    """

    kind: str
    target: int
    beta: dict
    den: int = 1
    levels0: list = field(default_factory=list)
    levels1: list = field(default_factory=list)
    level_den: int = 1
    value: Fraction | None = None


def _count_below(values: np.ndarray, num: int, den: int, theta_f: float) -> tuple[int, int]:
    """(#scores < θ, #scores <= θ) exactly for θ = num/den (den > 0), distinct sorted scores.

    ``theta_f`` must be float(θ), correctly rounded (Python's int / int is).
    """
    lo = int(values.searchsorted(theta_f))
    if lo == values.size or values[lo] != theta_f:  # θ_f is no score, so no score lies between θ and θ_f
        return lo, lo
    hi = lo + 1  # the scores are distinct
    a, b = float(values[lo]).as_integer_ratio()
    diff = num * b - a * den
    if diff < 0:
        return lo, lo
    if diff > 0:
        return hi, hi
    return lo, hi


def _exact_scale(vb: list, det: int) -> tuple[list[int], int]:
    """The basic scores ``vb`` as integers V over one denominator D·2**s (s: a common power of two), so that
    θ_j = (h_j · V) / (D·2**s) exactly."""
    mant_exp = [math.frexp(v) for v in vb]
    shift = max([0] + [53 - e for mt, e in mant_exp if mt])
    return [int(math.ldexp(mt, 53)) << (e - 53 + shift) if mt else 0 for mt, e in mant_exp], det << shift


def _as_int50(x) -> np.ndarray | None:
    """``x`` (integers) as an int64 array when every entry is below 2**50 in absolute value, else None.

    Below 2**50 the vectorised iteration's products stay exact in int64 and the entries exact in float64.
    """
    arr = x if isinstance(x, np.ndarray) else np.asarray(x, dtype=object)
    if arr.size and max(abs(int(arr.max())), abs(int(arr.min()))) >= _INT50:
        return None
    return arr.astype(np.int64)


def _replace_row_wide(adj: np.ndarray, det: int, h: np.ndarray, h_enter: np.ndarray, i: int) -> tuple | None:
    """:func:`_replace_row` on int64 arrays; None when an entry could reach 2**50 (the caller goes on in ints)."""
    p = int(h_enter[i])
    u = h_enter.copy()
    u[i] -= det
    col_a, col_h = adj[:, i], h[:, i]
    top = max(int(np.abs(adj).max()), int(np.abs(h).max()))
    col_top = max(int(np.abs(col_a).max()), int(np.abs(col_h).max()))
    if abs(p) * top + col_top * int(np.abs(u).max()) >= _INT50 or abs(det * p) >= _INT50:
        return None
    new_adj = p * adj - np.outer(col_a, u)
    new_h = p * h - np.outer(col_h, u)
    new_det = det * p
    g = math.gcd(new_det, int(np.gcd.reduce(new_adj.ravel())))
    if new_det < 0:
        g = -g
    if g != 1:
        new_adj //= g
        new_h //= g
        new_det //= g
    return new_adj, new_det, new_h


def _to_float(num: int, den: int) -> float:
    """num / den correctly rounded; +-inf beyond the float range (every score then lies on one side of it)."""
    try:
        return num / den
    except OverflowError:
        return math.inf if num > 0 else -math.inf


def _adj_det(m: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer (A, D) with M·A = D·I and D > 0 for a nonsingular integer matrix (float guess, exact check)."""
    r = m.shape[0]
    if r <= 24:
        det = round(float(np.linalg.det(m)))
        if det != 0 and abs(det) < 2**40:
            adj = np.rint(np.linalg.inv(m.astype(np.float64)) * det).astype(np.int64)
            if np.array_equal(m.astype(np.int64) @ adj, det * np.eye(r, dtype=np.int64)):
                return (adj, det) if det > 0 else (-adj, -det)
    # exact integer Gauss-Jordan on [M | I], each row kept primitive (divided by the gcd of its entries)
    rows = [[int(x) for x in row] + [int(i == j) for j in range(r)] for i, row in enumerate(m.tolist())]
    for col in range(r):
        piv = next(i for i in range(col, r) if rows[i][col] != 0)
        rows[col], rows[piv] = rows[piv], rows[col]
        pr = rows[col]
        for i in range(r):
            f = rows[i][col]
            if i != col and f:
                row = [pr[col] * x - f * y for x, y in zip(rows[i], pr)]
                g = math.gcd(*row)
                rows[i] = [x // g for x in row]
    # now rows[i] = [D_i e_i | R_i] with M^{-1} = diag(1/D_i) R
    diag = [rows[i][i] for i in range(r)]
    den = abs(math.lcm(*diag))
    adj = np.empty((r, r), dtype=object)
    for i in range(r):
        scale = den // diag[i]
        for j in range(r):
            adj[i, j] = rows[i][r + j] * scale
    check = m.astype(object) @ adj
    if not all(check[i, j] == (den if i == j else 0) for i in range(r) for j in range(r)):
        raise CertificateError("exact basis inverse failed its check")
    return adj, den


def _replace_row(adj: list, det: int, h: list, h_enter: list, i: int) -> tuple[list, int, list]:
    """Exact update of (A, D, h = Φ·A) with M·A = D·I when row i of M becomes the entering atom's pattern.

    Sherman-Morrison in integers: with p = h_enter[i] (non-zero) and u = h_enter - D·e_i, the new pair is
    A' = p·A - A[:, i] uᵀ, D' = D·p (then divided by their gcd), and h' = p·h - h[:, i] uᵀ.
    """
    p = h_enter[i]
    u = [x - (det if k == i else 0) for k, x in enumerate(h_enter)]
    new_adj = [[p * a - row[i] * uk for a, uk in zip(row, u)] for row in adj]
    new_h = [[p * a - row[i] * uk for a, uk in zip(row, u)] if row[i] else [p * a for a in row] for row in h]
    new_det = det * p
    g = math.gcd(new_det, *(x for row in new_adj for x in row))
    if new_det < 0:
        g = -g
    if g != 1:
        new_adj = [[x // g for x in row] for row in new_adj]
        new_h = [[x // g for x in row] for row in new_h]
        new_det //= g
    return new_adj, new_det, new_h


def independent_rows(rows: np.ndarray, order) -> list[int]:
    """Greedy maximal set of linearly independent integer rows (exact fraction-free elimination), visiting ``order``."""
    basis: list[tuple[int, list[int]]] = []  # (pivot column, reduced integer row)
    chosen = []
    rows = np.asarray(rows).tolist()
    for i in order:
        vec = [int(x) for x in rows[i]]
        for pc, b in basis:
            if vec[pc]:
                f, g = b[pc], vec[pc]
                vec = [f * x - g * y for x, y in zip(vec, b)]
        pc = next((j for j, x in enumerate(vec) if x), None)
        if pc is not None:
            div = math.gcd(*vec)
            basis.append((pc, [x // div for x in vec]))
            chosen.append(i)
    return chosen


def _lex_cmp(x0, x1, y0) -> int:
    """Sign of (x0 + ε x1) - y0."""
    if x0 != y0:
        return 1 if x0 > y0 else -1
    return (x1 > 0) - (x1 < 0)


def _leaving(basis: list, x0: list, x1: list, lowers: list, uppers: list, det: int, bland: bool) -> tuple:
    """(row, σ) of the basic atom to leave: the largest violation of its level box [lowers, uppers] (times det),
    compared lexicographically with the ε parts x1, or with ``bland`` the lowest violated atom; σ = -1 below the box,
    +1 above; (None, 0) when every basic level is in its box."""
    leave, sigma, worst = None, 0, None
    for i, b in enumerate(basis):
        lower, upper = lowers[i] * det, uppers[i] * det
        if _lex_cmp(x0[i], x1[i], lower) < 0:
            viol, sg = lower - x0[i], -1
        elif _lex_cmp(x0[i], x1[i], upper) > 0:
            viol, sg = x0[i] - upper, 1
        else:
            continue
        if worst is None or (b < basis[leave] if bland else viol > worst):
            leave, sigma, worst = i, sg, viol
    return leave, sigma


class DualSimplex:
    """Exact per-atom thresholds for atoms with data (and target atoms without), warm-started between targets.

    Parameters
    ----------
    values : list of ndarray
        Distinct sorted scores (float64) of each data atom.
    weights_q : list of ndarray
        q·(integer weight) of each distinct score (int64 or object ints).
    patterns : ndarray of bool, shape (m, d)
        Membership pattern of each data atom (no all-zero rows, no duplicates).
    p, q : int
        α = p/q.
    test_weight : int
        Integer weight of the imputed test point, on the weights' scale.
    """

    #: pivots (plus 5 per atom) chosen by the largest violation before switching to Bland's lowest-index rule
    bland_after = 50
    #: data atoms from which a family with several relations runs the vectorised iteration (:meth:`_dual_simplex_wide`)
    wide_from = 24

    def __init__(self, values, weights_q, patterns, p: int, q: int, test_weight: int) -> None:
        self.values = [np.asarray(v, dtype=np.float64) for v in values]
        self.levels = []  # C_b: q-scaled cumulative weights with a leading 0
        for w in weights_q:
            c = np.concatenate([np.zeros(1, dtype=w.dtype), np.cumsum(w)])
            self.levels.append(c if c.dtype == object or int(c[-1]) < _INT64_SAFE else c.astype(object))
        self.patterns = np.asarray(patterns, dtype=bool)
        self.p, self.q, self.tw = int(p), int(q), int(test_weight)
        self.n_data = len(self.values)
        self.d = self.patterns.shape[1] if self.patterns.ndim == 2 else 0
        totals = [int(c[-1]) for c in self.levels]
        # base levels in q-units: (q - p)·W_b = (q - p)/q · C_b[-1]
        self.base = [(self.q - self.p) * (t // self.q) for t in totals]
        self._int_levels = all(c.dtype != object for c in self.levels)  # int64 levels (the vectorised iteration)
        order = sorted(range(self.n_data), key=lambda b: -totals[b])
        rows_int = self.patterns.astype(np.int64)
        self.basic_atoms_start = independent_rows(rows_int, order)
        self.rank = len(self.basic_atoms_start)
        self.groups = independent_rows(rows_int.T, range(self.d)) if self.rank else []  # G: r independent columns
        # last optimal basis: (atoms, score indices, adjugate A (r x r), D, h = Φ_G·A of the data atoms)
        self._warm: tuple | None = None
        self._line: tuple | bool | None = None  # built by _relation_brackets on the first call
        self._base: tuple | bool | None = None  # optimal basis without the test point (several relations)
        self._flat: tuple | None = None  # flat score and level tables of the vectorised iteration (built on first use)
        self._index = {p.tobytes(): b for b, p in enumerate(self.patterns)}
        member = self.patterns.tolist()
        self.atom_groups = [[g for g, x in enumerate(row) if x] for row in member]  # groups of each data atom
        self.group_rows = [[b for b, row in enumerate(member) if row[g]] for g in range(self.d)]  # atoms of each group
        self._phi_g = self.patterns[:, self.groups].astype(np.int64) if self.d else np.zeros((self.n_data, 0), np.int64)

    # ---------------------------------------------------------------- public
    def solve(self, target: np.ndarray) -> Certificate:
        """Certificate (optimal with its exact value, or unbounded) for a target pattern (a data atom's or a new one)."""
        target = np.asarray(target, dtype=bool)
        key = target.tobytes()
        pats = self.patterns
        if key in self._index:
            a, extra = self._index[key], None
        else:
            a, extra = self.n_data, target
        phi = pats if extra is None else np.vstack([pats, extra[None, :]]) if self.n_data else extra[None, :]
        if extra is not None and not self._in_span(extra):
            return Certificate("unbounded", a, self._escape_direction(extra))
        if self.n_data and self.n_data != self.rank + 1:
            # not one relation: every target starts from the optimum without the test point (one point's weight
            # away), which takes fewer pivots than the previous target's optimum
            if self._base is None:
                self._warm = None
                self._iterate(0, pats, test_level=0)
                self._base = self._warm if self._warm is not None else False
            if self._base:
                self._warm = self._base
        return self._iterate(a, phi)

    def _iterate(self, a: int, phi: np.ndarray, test_level: int | None = None) -> Certificate:
        """The dual simplex for target a: vectorised over the atoms for many-atom families, else the scalar loop."""
        if phi.shape[0] == self.n_data >= self.wide_from and self.n_data != self.rank + 1 and self._int_levels:
            cert = self._dual_simplex_wide(a, test_level)
            if cert is not None:
                return cert
        if self._warm is not None and isinstance(self._warm[2], np.ndarray):  # a state of the vectorised loop
            basis, kidx, adj, det, h = self._warm
            self._warm = (basis, kidx, adj.tolist(), det, h.tolist())
        return self._dual_simplex(a, phi, test_level)

    # ---------------------------------------------------------------- helpers
    def _in_span(self, row: np.ndarray) -> bool:
        if self.rank == 0:
            return False
        rows = np.vstack([self.patterns[self.basic_atoms_start], row[None, :]]).astype(np.int64)
        return len(independent_rows(rows, range(len(rows)))) == self.rank

    def _escape_direction(self, row: np.ndarray) -> dict:
        """Integer δ with Φ_b·δ = 0 for every data atom and Φ_a·δ > 0 (the target is outside the data's span)."""
        from .solver import left_null_space

        if self.n_data:
            basis = left_null_space(self.patterns.T.astype(np.int64))  # {δ : P δ = 0}
        else:
            basis = [[int(i == j) for j in range(self.d)] for i in range(self.d)]
        for vec in basis:
            s = sum(int(x) * int(y) for x, y in zip(vec, row))
            if s != 0:
                return {g: (x if s > 0 else -x) for g, x in enumerate(vec) if x}
        raise CertificateError("target pattern outside the span but no escape direction found")

    def _dual_simplex(self, a: int, phi: np.ndarray, test_level: int | None = None) -> Certificate:
        """Optimal or unbounded certificate for target a; ``test_level``: the test point's level (default
        (q - p)·w_test)."""
        m = phi.shape[0]
        G = self.groups
        r = len(G)
        phi_g = self._phi_g if m == self.n_data else phi[:, G].astype(np.int64)
        L = list(self.base) + ([0] if m > self.n_data else [])
        L[a] = L[a] + ((self.q - self.p) * self.tw if test_level is None else test_level)
        if self._warm is not None:
            basis, kidx, adj, det, h_data = self._warm
            basis, kidx, adj, h = list(basis), list(kidx), [list(row) for row in adj], [list(row) for row in h_data]
            if m == self.n_data == r + 1:
                start = self._relation_start(a, basis, adj, det, h)
                if start is not None:
                    basis, kidx, adj, det, h = start
        else:
            basis = list(self.basic_atoms_start)
            kidx = []
            for b in basis:  # start at the decoupled weighted quantile of each basic atom
                j = self._index_of_level(b, self.base[b]) - 1
                kidx.append(min(max(j, 0), len(self.values[b]) - 1))
            adj_arr, det = _adj_det(phi_g[basis])
            adj = adj_arr.tolist()
            h = (phi_g[: self.n_data].astype(object) @ adj_arr.astype(object)).tolist()
            if m == self.n_data == r + 1:
                start = self._relation_start(a, basis, adj, det, h)
                if start is not None:
                    basis, kidx, adj, det, h = start
        if m > self.n_data:  # the target without data: its row of h
            row = phi_g[m - 1].tolist()
            h.append([sum(row[g] * adj[g][i] for g in range(r) if row[g]) for i in range(r)])
        pos: dict[int, int] = {}  # remembered level index of nonbasic atoms (decides only where θ sits on a score)
        max_iter = 200 + 20 * m
        bland_after = self.bland_after + 5 * m  # then the lowest-index violated atom leaves (against cycling)
        for it in range(max_iter):
            # β on a common dyadic scale: θ_j = (h_j · V) / (det · 2^s), V the basic scores times 2^s (integers)
            vint, den = _exact_scale([float(self.values[b][k]) for b, k in zip(basis, kidx)], det)
            numer = [sum(map(mul, h[j], vint)) for j in range(m)]
            in_basis = {b: i for i, b in enumerate(basis)}
            kpos = [0] * m
            theta_f = [0.0] * m
            level0 = [0] * m
            for j in range(m):
                theta_f[j] = _to_float(numer[j], den)
                if j in in_basis or j >= self.n_data:
                    continue
                lo, hi = _count_below(self.values[j], numer[j], den, theta_f[j])
                kpos[j] = min(max(pos.get(j, lo), lo), hi)
                level0[j] = int(self.levels[j][kpos[j]])
            # basic levels times det: det·L_B + Σ_nonbasic h_j (L_j - c_j); ε part: -det·e_a (a basic) or -h_a
            x0 = [det * L[b] for b in basis]
            for j in range(m):
                if j in in_basis:
                    continue
                diff = L[j] - level0[j]
                if diff:
                    hj = h[j]
                    for i in range(r):
                        if hj[i]:
                            x0[i] += hj[i] * diff
            if a in in_basis:
                x1 = [0] * r
                x1[in_basis[a]] = -det
            else:
                x1 = [-hv for hv in h[a]]
            lowers = [int(self.levels[b][k]) for b, k in zip(basis, kidx)]
            uppers = [int(self.levels[b][k + 1]) for b, k in zip(basis, kidx)]
            leave, sigma = _leaving(basis, x0, x1, lowers, uppers, det, it >= bland_after)
            if leave is None:
                beta = {G[g]: sum(map(mul, adj[g], vint)) for g in range(r)}
                lv0 = [lv * det for lv in level0]
                lv1 = [0] * m
                for i, b in enumerate(basis):
                    lv0[b] = x0[i]
                    lv1[b] = x1[i]
                self._warm = (list(basis), list(kidx), adj, det, h[: self.n_data])
                return Certificate("optimal", a, beta, den, lv0, lv1, det, Fraction(numer[a], den))
            # the leaving atom goes to its violated bound and its fitted value moves away (σ = -1: down)
            ell = basis[leave]
            lower, upper = lowers[leave] * det, uppers[leave] * det
            rate0 = (x0[leave] - lower, x1[leave]) if sigma < 0 else (upper - x0[leave], -x1[leave])
            g = [sigma * h[j][leave] for j in range(m)]
            kpos[ell] = kidx[leave] if sigma < 0 else kidx[leave] + 1
            moving = [j for j in range(m) if g[j] and j < self.n_data and (j not in in_basis or j == ell)]
            if it >= bland_after:
                found = self._bland_ratio(moving, g, kpos, lambda j: Fraction(numer[j], den), m)
            else:
                found = self._line_search(moving, g, kpos, theta_f, rate0, m)
            if found is None:
                return self._unbounded(a, adj, leave, sigma)
            e_atom, e_idx, counts = found
            pos = {}
            for j in range(m):
                if (j in in_basis and j != ell) or j >= self.n_data or j == e_atom:
                    continue
                pos[j] = kpos[j] + int(counts[j]) if g[j] > 0 else kpos[j] - int(counts[j])
            if e_atom != ell:
                basis[leave] = e_atom
                adj, det, h = _replace_row(adj, det, h, h[e_atom], leave)
            kidx[leave] = e_idx
        raise CertificateError(f"dual simplex did not converge in {max_iter} pivots")

    def _flat_tables(self) -> tuple:
        """Every data atom's scores and levels back to back, and integer keys that let one searchsorted count each
        atom's scores below a bound: key = atom · (U + 1) + rank of the score among the U distinct scores."""
        if self._flat is None:
            sizes = np.array([v.size for v in self.values], dtype=np.int64)
            first = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
            flat_v = np.concatenate(self.values)
            distinct = np.unique(flat_v)
            kbase = np.arange(self.n_data, dtype=np.int64) * (distinct.size + 1)
            keys = np.repeat(kbase, sizes) + distinct.searchsorted(flat_v)
            flat_c = np.concatenate(self.levels)  # C_b[0..K_b] of atom b start at first_b + b
            self._flat = (first, sizes, flat_v, flat_c, first + np.arange(self.n_data), distinct, kbase, keys)
        return self._flat

    def _count_scores(self, x: np.ndarray, side: str) -> np.ndarray:
        """Per data atom j, how many of its scores are < x[j] (``side="left"``) or <= x[j] (``"right"``)."""
        first, _, _, _, _, distinct, kbase, keys = self._flat_tables()
        return keys.searchsorted(kbase + distinct.searchsorted(x, side=side)) - first

    def _dual_simplex_wide(self, a: int, test_level: int | None) -> Certificate | None:
        """:meth:`_dual_simplex` for a data target with each per-atom step done on arrays (the same certificate).

        Fitted values are evaluated in floats with a rigorous error bound; an atom with one of its scores inside
        that bound (ties) is counted exactly in integers, the others are exact by the bound. The integer state
        (A, D, h) is kept in int64 below 2**50; when a pivot would leave that range, the scalar loop goes on from
        the current basis in Python ints. None (nothing done) when the start is already beyond that range. The
        pivots follow the scalar loop's rules, but breakpoints a rounding error apart may be taken in another order.
        """
        first, _, flat_v, flat_c, cfirst, *_ = self._flat_tables()
        m, G = self.n_data, self.groups
        r = len(G)
        L = list(self.base)
        L[a] += (self.q - self.p) * self.tw if test_level is None else test_level
        L_arr = np.array(L, dtype=np.int64) if max(map(abs, L)) < _INT64_SAFE else None
        state = None
        if L_arr is not None and self._warm is not None:
            basis, kidx, adj, det, h = self._warm
            basis, kidx = list(basis), list(kidx)
            adj, h = _as_int50(adj), _as_int50(h)
            state = None if adj is None or h is None or det >= _INT50 else (basis, kidx, adj, det, h)
        elif L_arr is not None:
            basis = list(self.basic_atoms_start)
            kidx = [min(max(self._index_of_level(b, self.base[b]) - 1, 0), len(self.values[b]) - 1) for b in basis]
            adj_exact, det = _adj_det(self._phi_g[basis])
            adj = _as_int50(adj_exact)
            if adj is not None and det < _INT50:
                h = _as_int50(self._phi_g @ adj)
                state = None if h is None else (basis, kidx, adj, det, h)
        if state is None:  # magnitudes beyond the vectorised range
            return None
        basis, kidx, adj, det, h = state
        hf = h.astype(np.float64)
        hf_abs, h_top = np.abs(hf), float(np.abs(h).max())  # change with h only (at a pivot)
        pos = np.full(m, -1, dtype=np.int64)  # remembered level index of nonbasic atoms, -1: none
        movable = np.empty(m, dtype=bool)
        max_iter = 200 + 20 * m
        bland_after = self.bland_after + 5 * m
        for it in range(max_iter):
            bidx = np.array(basis)
            vb = flat_v[first[bidx] + kidx]
            theta = hf @ vb
            err = hf_abs @ np.abs(vb)
            theta /= det
            err *= 2.0 * (r + 2) * _UNIT / det  # twice the bound on the float dot product and division
            err += 1e-300
            theta[bidx] = vb  # basic atoms sit on their scores
            lo, hi = self._count_scores(theta - err, "left"), self._count_scores(theta + err, "right")
            movable.fill(True)
            movable[bidx] = False
            unsure = np.flatnonzero(((lo != hi) | ~np.isfinite(theta) | ~np.isfinite(err)) & movable)
            scale = None  # (V, D·2**s) of _exact_scale, when an exact value is needed
            if unsure.size:  # a score within the error bound: count exactly
                scale = _exact_scale(vb.tolist(), det)
                vint, den = scale
                for j in unsure.tolist():
                    num = sum(map(mul, h[j].tolist(), vint))
                    theta[j] = _to_float(num, den)
                    lo[j], hi[j] = _count_below(self.values[j], num, den, theta[j])
            kpos = np.where(pos >= 0, np.minimum(np.maximum(pos, lo), hi), lo)
            level0 = flat_c[cfirst + kpos]
            diff = L_arr - level0
            diff[bidx] = 0
            if float(np.abs(diff).sum(dtype=np.float64)) * h_top < 2.0**62:
                x0 = (diff @ h).tolist()
            else:
                x0 = (diff.astype(object) @ h.astype(object)).tolist()
            x0 = [det * L[b] + x for b, x in zip(basis, x0)]
            if a in basis:
                x1 = [0] * r
                x1[basis.index(a)] = -det
            else:
                x1 = (-h[a]).tolist()
            lowers = flat_c[cfirst[bidx] + kidx].tolist()
            uppers = flat_c[cfirst[bidx] + kidx + 1].tolist()
            leave, sigma = _leaving(basis, x0, x1, lowers, uppers, det, it >= bland_after)
            if leave is None:
                vint, den = scale = scale or _exact_scale(vb.tolist(), det)
                adj_rows = adj.tolist()
                beta = {G[g]: sum(map(mul, adj_rows[g], vint)) for g in range(r)}
                lv0 = [lv * det for lv in level0.tolist()]
                lv1 = [0] * m
                for i, b in enumerate(basis):
                    lv0[b] = x0[i]
                    lv1[b] = x1[i]
                self._warm = (list(basis), list(kidx), adj, det, h)
                value = Fraction(sum(map(mul, h[a].tolist(), vint)), den)
                return Certificate("optimal", a, beta, den, lv0, lv1, det, value)
            ell = basis[leave]
            lower, upper = lowers[leave] * det, uppers[leave] * det
            rate0 = (x0[leave] - lower, x1[leave]) if sigma < 0 else (upper - x0[leave], -x1[leave])
            g = sigma * h[:, leave]
            kpos[ell] = kidx[leave] if sigma < 0 else kidx[leave] + 1
            movable[ell] = True
            moving = np.flatnonzero((g != 0) & movable)
            if it >= bland_after:
                vint, den = scale = scale or _exact_scale(vb.tolist(), det)
                found = self._bland_ratio(moving.tolist(), g.tolist(), kpos.tolist(),
                                          lambda j: Fraction(sum(map(mul, h[j].tolist(), vint)), den), m)
            else:
                found = self._line_search_wide(moving, g, kpos, theta, rate0)
            if found is None:
                return self._unbounded(a, adj.tolist(), leave, sigma)
            e_atom, e_idx, counts = found
            pos = np.where(g > 0, kpos + counts, kpos - counts)
            movable[e_atom] = False
            pos[~movable] = -1
            kidx[leave] = e_idx
            if e_atom != ell:
                basis[leave] = e_atom
                step = _replace_row_wide(adj, det, h, h[e_atom], leave)
                if step is None:  # entries would reach 2**50: the exact pivot, then the scalar loop
                    adj, det, h = _replace_row(adj.tolist(), det, h.tolist(), h[e_atom].tolist(), leave)
                    self._warm = (basis, kidx, adj, det, h)
                    return self._dual_simplex(a, self.patterns, test_level)
                adj, det, h = step
                hf = h.astype(np.float64)
                hf_abs, h_top = np.abs(hf), float(np.abs(h).max())
        raise CertificateError(f"dual simplex did not converge in {max_iter} pivots")

    def _line_search_wide(self, moving: np.ndarray, g: np.ndarray, kpos: np.ndarray, theta: np.ndarray, rate0: tuple
                          ) -> tuple | None:
        """:meth:`_line_search` on arrays: windows of ``k`` breakpoints of every moving atom at once."""
        first, sizes, flat_v, flat_c, cfirst = self._flat[:5]
        need = -rate0[0]
        side = "right" if rate0[1] < 0 else "left"
        gm = g[moving]
        up = gm > 0
        k0 = kpos[moving]
        avail = np.where(up, sizes[moving] - k0, k0)  # breakpoints ahead of each moving atom
        keep = avail > 0
        if not keep.any():
            return None
        moving, gm, up, k0, avail = moving[keep], gm[keep], up[keep], k0[keep], avail[keep]
        absg = np.abs(gm)
        top = flat_c[cfirst[moving] + sizes[moving]]  # each atom's total level
        big = abs(need) >= _INT64_SAFE or float(absg.max()) * float(top.max()) * moving.size >= _INT64_SAFE
        fv, fc, th = first[moving][:, None], cfirst[moving][:, None], theta[moving][:, None]

        def stop_in(order: np.ndarray, step: np.ndarray) -> int:
            """Position in ``order`` where the cumulative rate first reaches ``need`` (len(order) if it does not)."""
            step, gain = step[order], absg[order // k]
            if not big:
                return int(np.searchsorted(np.cumsum(step * gain), need, side=side))
            # int64 sums could overflow: locate the stop in floats, then confirm it in Python ints
            approx = np.cumsum(step.astype(np.float64) * gain.astype(np.float64))
            size = min(order.size, int(np.searchsorted(approx, float(need), side=side)) + 16)
            while True:
                exact = np.cumsum(step[:size].astype(object) * gain[:size].astype(object))
                stop = int(np.searchsorted(exact, need, side=side))
                if stop < size or size == order.size:
                    return stop
                size = min(order.size, 2 * size)

        k = 8
        while True:
            steps = np.arange(k)
            valid = steps < avail[:, None]
            ahead = np.where(up[:, None], k0[:, None] + steps, k0[:, None] - 1 - steps)
            idx = np.where(valid, ahead, 0)  # score indices
            t = (flat_v[fv + idx] - th) / gm[:, None]
            t[~valid] = np.inf
            step = flat_c[fc + idx + 1] - flat_c[fc + idx]  # q-weight of each score crossed (exact int64)
            step[~valid] = 0
            truncated = avail > k
            cap = float(t[truncated, k - 1].min()) if truncated.any() else math.inf
            t, step = t.ravel(), step.ravel()  # atom-major: ties in atom order, as the scalar search
            # the stop is nearly always among the first few breakpoints: order those, then all if needed
            head = min(32, t.size)  # (every breakpoint tied with the 32nd too, in atom order)
            order = np.flatnonzero(t <= np.partition(t, head - 1)[head - 1]) if head < t.size else np.arange(t.size)
            order = order[np.argsort(t[order], kind="stable")]
            stop = stop_in(order, step)
            if stop == order.size < t.size:
                order = np.argsort(t, kind="stable")
                stop = stop_in(order, step)
            if stop < t.size and max(float(t[order[stop]]), 0.0) < cap:
                counts = np.zeros(self.n_data, dtype=np.int64)
                counts[moving] = np.bincount(order[:stop] // k, minlength=moving.size)
                e = int(order[stop])
                return int(moving[e // k]), int(idx.ravel()[e]), counts
            if cap == math.inf:
                return None
            k *= 4

    def _relation_start(self, a: int, basis: list, adj: list, det: int, h: list) -> tuple | None:
        """A basis near the optimum for target a when the patterns have one relation (rank m - 1), or None.

        The levels then lie on a line c = L + t·n (n the relation: Σ n_b Φ_b = 0), and the optimal t is where the
        fitted values' relation y(t) = Σ n_b θ_b(c_b) changes sign, θ_b(c) being the score at level c (y is
        non-decreasing in t). :meth:`_relation_brackets` brackets that t in floats for every target at once. The
        atoms whose score changes across the bracket sit on a breakpoint at the optimum; several do when levels tie
        (equal weights). Moving them one at a time from their score before the bracket to the one after, the atom
        at which y crosses zero is made the non-basic one (one exact row exchange), those moved before it start at
        their score after the bracket, the rest before it. This only places the start: the exact pivots and the
        certificate decide the result. Returns the new (basis, score indices, A, D, h).
        """
        if self._line is None:
            self._line = self._relation_brackets(basis, det, h)
        if self._line is False:
            return None
        n, brackets, base_f, flat, flat_v, off, first, last = self._line
        lo, hi = brackets[a]
        base = base_f.copy()
        base[a] += (self.q - self.p) * float(self.tw)
        side: dict[int, int] = {}  # score index of an atom on the relation: at the bracket's lower or upper end
        if lo < hi:
            sup = np.flatnonzero(n)
            at = flat.searchsorted((base[sup] + off[sup])[:, None] + n[sup, None] * np.array([lo, hi]), side="left")
            at = np.minimum(np.maximum(at, first[sup, None]), last[sup, None])
            moved = np.flatnonzero(at[:, 0] != at[:, 1]).tolist()
            if moved:
                score = flat_v[at]
                y = float(n[sup] @ score[:, 0])
                jumps = (n[sup] * (score[:, 1] - score[:, 0])).tolist()
                cross = moved[-1]
                for i in moved:
                    if y + jumps[i] >= 0:
                        cross = i
                        break
                    y += jumps[i]
                up = at[:, 1] - first[sup]
                down = at[:, 0] - first[sup]
                after = set(i for i in moved if i > cross)
                side = {int(b): int(down[i] if i in after else up[i]) for i, b in enumerate(sup.tolist())}
                leaving = int(sup[cross])
                in_basis = set(basis)
                j = next(b for b in range(self.n_data) if b not in in_basis)
                if leaving != j:
                    i = basis.index(leaving)
                    adj, det, h = _replace_row(adj, det, h, h[j], i)
                    basis = basis[:i] + [j] + basis[i + 1 :]
        bb = np.asarray(basis)
        k = flat.searchsorted(base[bb] + off[bb] + 0.5 * (lo + hi) * n[bb], side="right")
        kidx = (np.minimum(np.maximum(k, first[bb]), last[bb]) - first[bb]).tolist()
        kidx = [side.get(b, k_b) for b, k_b in zip(basis, kidx)]
        return basis, kidx, adj, det, h

    def _relation_brackets(self, basis: list, det: int, h: list) -> tuple | bool:
        """The relation n, a float bracket (t_lo, t_hi) of the optimal t per target, and the float level axis for
        :meth:`_relation_start`; False when the levels do not fit in floats.

        All atoms' levels C_b[1:] lie on one float axis (atom b shifted by off_b), so one searchsorted finds every
        atom's score at every grid point of every target; three refinements of a 33-point grid per target.
        """
        if max(int(c[-1]) for c in self.levels).bit_length() > 1000:
            return False
        tops = np.array([float(c[-1]) for c in self.levels])
        base_f = np.array([float(x) for x in self.base])
        off = np.concatenate([[0.0], np.cumsum(tops + 1.0)[:-1]])
        sizes = np.array([v.size for v in self.values])
        first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        last = first + sizes - 1
        flat = np.concatenate([np.asarray(c[1:], dtype=np.float64) + o for c, o in zip(self.levels, off)])
        flat_v = np.concatenate(self.values)
        in_basis = set(basis)
        j = next(b for b in range(self.n_data) if b not in in_basis)
        n = np.zeros(self.n_data)
        n[j] = det
        n[basis] = [-float(x) for x in h[j]]
        n /= np.abs(n).max()
        sup = np.flatnonzero(n)
        ns = n[sup]
        neg = ns < 0
        lev = np.tile(base_f, (self.n_data, 1))  # row T: the base levels with target T's test point
        lev.flat[:: self.n_data + 1] += (self.q - self.p) * float(self.tw)
        lev = lev[:, sup]
        e0, e1 = -lev / ns, (tops[sup] - lev) / ns  # feasible t: 0 <= L_b + t n_b <= T_b
        lo, hi = np.minimum(e0, e1).max(axis=1), np.maximum(e0, e1).min(axis=1)
        ok = np.flatnonzero(lo < hi)  # targets with a feasible segment (the others keep lo >= hi)
        start = (lev + off[sup])[ok, :, None]
        slope = ns[None, :, None]
        first3, last3 = first[sup][None, :, None], last[sup][None, :, None]
        rows = np.arange(ok.size)
        t_lo, t_hi = lo[ok], hi[ok]
        for _ in range(3):
            t = t_lo[:, None] + (t_hi - t_lo)[:, None] * _GRID
            q = start + slope * t[:, None, :]
            q[:, neg] = q[:, neg, ::-1]  # every row ascending: searchsorted is faster on sorted keys
            idx = flat.searchsorted(q, side="left")
            idx[:, neg] = idx[:, neg, ::-1]
            idx = np.minimum(np.maximum(idx, first3, out=idx), last3, out=idx)
            i = (np.einsum("s,tsg->tg", ns, flat_v[idx]) < 0).sum(axis=1)  # y is non-decreasing along each row
            t_lo = t[rows, np.maximum(i - 1, 0)]
            t_hi = t[rows, np.minimum(i, _GRID.size - 1)]
        lo[ok], hi[ok] = t_lo, t_hi
        return n, list(zip(lo.tolist(), hi.tolist())), base_f, flat, flat_v, off, first, last

    def _bland_ratio(self, moving: list, g: list, kpos: list, theta: Callable[[int], Fraction], m: int) -> tuple | None:
        """Bland's entering rule, exactly: the nearest breakpoint along the edge (equal ones: the lowest atom).

        Used after ``bland_after`` pivots with the lowest-index leaving rule; a short step, whatever the rate there.
        The long-step searches order breakpoints in floats, and a wrong order between breakpoints a rounding error
        apart can make pivots repeat, so this one compares exact rationals (``theta(j)``: the exact fitted value of
        atom j). Returns (atom, score index, zero crossings), or None when no moving atom has a score ahead.
        """
        best = None
        for j in moving:
            gj, k0, v = g[j], kpos[j], self.values[j]
            k = k0 if gj > 0 else k0 - 1  # the atom's next score in its direction
            if not 0 <= k < v.size:
                continue
            t = (Fraction(float(v[k])) - theta(j)) / gj
            if best is None or t < best[0]:
                best = (t, j, k)
        return None if best is None else (best[1], best[2], np.zeros(m, dtype=np.int64))

    def _line_search(self, moving, g, kpos, theta_f, rate0, m):
        """First breakpoint along the edge where the (scaled) rate turns >= 0 lexicographically.

        Moving atom j crosses its scores from level index kpos[j] upward (g_j > 0) or downward, each crossing adding
        |g_j|·(q-weight of the score) to the rate. Breakpoints are taken in windows of ``k`` per atom, doubled until
        the stop lies before the first truncated atom's window end. Returns (atom, score index, crossings per atom),
        or None when the rate stays negative (the objective is unbounded along the edge).
        """
        need = -rate0[0]
        side = "right" if rate0[1] < 0 else "left"  # first cumulative rate > need, resp. >= need
        k = 64
        while True:
            t_parts, inc_parts, heads = [], [], []  # heads: (atom, first score index, step ±1)
            cap = math.inf
            big = False
            for j in moving:
                v = self.values[j]
                c = self.levels[j]
                gj = g[j]
                k0 = kpos[j]
                if gj > 0:
                    hi = min(v.size, k0 + k)
                    if hi <= k0:
                        continue
                    t = (v[k0:hi] - theta_f[j]) / gj
                    inc = c[k0 + 1 : hi + 1] - c[k0:hi]
                    truncated = hi < v.size
                    heads.append((j, k0, 1))
                else:
                    lo = max(0, k0 - k)
                    if k0 <= lo:
                        continue
                    t = (v[lo:k0][::-1] - theta_f[j]) / gj
                    inc = (c[lo + 1 : k0 + 1] - c[lo:k0])[::-1]
                    truncated = lo > 0
                    heads.append((j, k0 - 1, -1))
                if truncated:
                    cap = min(cap, float(t[-1]))
                t_parts.append(t)
                big = big or inc.dtype == object or abs(gj) * int(c[-1]) * len(moving) >= _INT64_SAFE
                inc_parts.append((inc, abs(gj)))
            if not t_parts:
                return None
            t_all = np.concatenate(t_parts) if len(t_parts) > 1 else t_parts[0]
            incs = np.concatenate([(x.astype(object) if big else x) * kk for x, kk in inc_parts])
            order = np.argsort(t_all, kind="stable")  # ties: in atom order (parts are concatenated by atom)
            cum = np.cumsum(incs[order])
            stop = int(np.searchsorted(cum, need, side=side))
            if stop < cum.size and max(t_all[order[stop]], 0.0) < cap:
                starts = np.cumsum([0] + [t.size for t in t_parts])
                part = np.searchsorted(starts, order[: stop + 1], side="right") - 1
                counts = np.zeros(m, dtype=np.int64)
                np.add.at(counts, np.array([heads[i][0] for i in range(len(heads))])[part[:-1]], 1)
                j, first, step = heads[int(part[-1])]
                return j, first + step * int(order[stop] - starts[part[-1]]), counts
            if cap == math.inf:
                return None
            k *= 4

    def _index_of_level(self, j: int, level: int) -> int:
        """First index k with C_j[k] >= level."""
        c = self.levels[j]
        lo, hi = 0, len(c)
        while lo < hi:
            mid = (lo + hi) // 2
            if c[mid] < level:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _unbounded(self, a: int, adj: list, leave: int, sigma: int) -> Certificate:
        direction = {self.groups[g]: sigma * adj[g][leave] for g in range(len(self.groups)) if adj[g][leave]}
        return Certificate("unbounded", a, direction)


def check_certificate(cert: Certificate, engine: DualSimplex, target: np.ndarray) -> None:
    """Verify a certificate exactly against the problem data; raise :class:`CertificateError` when it fails.

    Independent of how the certificate was produced: it recomputes every fitted value from β, every level bound
    from the scores, and both equality systems over all d groups, in integers / rationals. For many atoms the
    scores below each fitted value are counted for all atoms at once (``DualSimplex._count_scores``, a table built
    from the scores alone, tested against a search in each atom's own scores) at the correctly rounded value, and
    in exact rationals wherever that value is a score.
    """
    target = np.asarray(target, dtype=bool)
    if target.shape != (engine.d,):
        raise CertificateError(f"target pattern must have shape ({engine.d},), got {target.shape}")
    a = cert.target
    target_groups = np.flatnonzero(target).tolist()
    groups_of = list(engine.atom_groups)  # member groups of each atom, the target without data last
    if type(a) is int and a >= engine.n_data:
        groups_of.append(target_groups)
    if type(a) is not int or not 0 <= a < len(groups_of) or groups_of[a] != target_groups:
        raise CertificateError("certificate target does not match the pattern")
    m, d = len(groups_of), engine.d
    # every number is checked as an exact Python int: floats or numpy scalars would compare approximately
    bad = [k for k, v in cert.beta.items() if type(k) is not int or not 0 <= k < d or type(v) is not int]
    if bad:
        raise CertificateError(f"certificate β must map groups 0..{d - 1} to ints, got entries {bad[:5]!r}")
    qp = engine.q - engine.p
    L = list(engine.base) + ([0] if m > engine.n_data else [])
    L[a] += qp * engine.tw
    totals = [int(c[-1]) for c in engine.levels] + ([0] if m > engine.n_data else [])
    if cert.kind == "unbounded":
        g = [sum(cert.beta.get(gr, 0) for gr in groups_of[j]) for j in range(m)]
        rate = sum(gj * ((totals[j] if gj > 0 else 0) - L[j]) for j, gj in enumerate(g))
        if not rate < 0:
            raise CertificateError(f"unbounded certificate has a non-negative recession rate {rate}")
        return
    if cert.kind != "optimal":
        raise CertificateError(f"unknown certificate kind {cert.kind!r}")
    den, lden = cert.den, cert.level_den
    if (
        type(den) is not int or type(lden) is not int or den <= 0 or lden <= 0
        or len(cert.levels0) != m or len(cert.levels1) != m
        or {*map(type, cert.levels0), *map(type, cert.levels1)} != {int}
    ):
        raise CertificateError("malformed optimal certificate (den, level_den and levels must be ints, one level per atom)")
    beta = [0] * d
    for gr, v in cert.beta.items():
        beta[gr] = v
    theta = [sum(map(beta.__getitem__, groups)) for groups in groups_of]
    if not isinstance(cert.value, Fraction) or cert.value.numerator * den != theta[a] * cert.value.denominator:
        raise CertificateError("certificate value differs from Φ_aᵀβ")
    c0, c1 = cert.levels0, cert.levels1
    in_target = set(groups_of[a])
    for gr in range(d):
        rows = engine.group_rows[gr] + ([m - 1] if m > engine.n_data and gr in groups_of[m - 1] else [])
        if sum(map(c0.__getitem__, rows)) != lden * sum(map(L.__getitem__, rows)):
            raise CertificateError(f"level balance fails on group {gr}")
        if sum(map(c1.__getitem__, rows)) != (-lden if gr in in_target else 0):
            raise CertificateError(f"tie-break balance fails on group {gr}")
    values, levels, n_data = engine.values, engine.levels, engine.n_data
    below = below_eq = [0] * m  # score counts < θ_j and <= θ_j (a target without data has none)
    if n_data >= engine.wide_from:  # all atoms at once at the correctly rounded θ_j; exactly where it is a score
        theta_f = [_to_float(t, den) for t in theta[:n_data]]
        below = engine._count_scores(np.array(theta_f), "left").tolist()
        below_eq = engine._count_scores(np.array(theta_f), "right").tolist()
        for j in [j for j in range(n_data) if below[j] != below_eq[j]]:
            below[j], below_eq[j] = _count_below(values[j], theta[j], den, theta_f[j])
    elif n_data:
        counts = [_count_below(values[j], theta[j], den, _to_float(theta[j], den)) for j in range(n_data)]
        below, below_eq = [c[0] for c in counts], [c[1] for c in counts]
    for j in range(m):
        lo, hi = (int(levels[j][below[j]]) * lden, int(levels[j][below_eq[j]]) * lden) if j < n_data else (0, 0)
        if c0[j] < lo or c0[j] > hi or (c0[j] == lo and c1[j] < 0) or (c0[j] == hi and c1[j] > 0):
            raise CertificateError(f"level of atom {j} outside [W_<(θ), W_<=(θ)]")
