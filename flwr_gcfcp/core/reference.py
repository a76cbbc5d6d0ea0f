"""Reference formulations used only to cross-check the exact engine and in the benchmark.

* :func:`appd_threshold` — the paper's App. D procedure: solve the dual LP (46)-(49) with the test point's score
  imputed at S, read the test dual variable, and bisect for the largest S whose test dual is strictly below
  ``(1 - α) w_test`` (the corrected "<" rule). Bisection with an absolute tolerance is itself inexact: the
  benchmark runs it at the paper's natural tolerance (1e-3) for timing and at 1e-10 for agreement.
* :func:`cvxpy_dual_threshold` — the same dual written in cvxpy and solved by its default conic solver: an
  independent formulation and solver for small test problems.

These are slow by design (one LP per bisection step); they are not used on any production path.
"""

from __future__ import annotations

import math

import numpy as np

#: HiGHS's tightest feasibility tolerances: with the defaults (1e-7) bisection stalls about 1e-7 below S*.
_HIGHS_TIGHT = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}

__all__ = ["appd_test_dual", "appd_threshold", "cvxpy_dual_threshold"]


def _prepare(values, weights, phi, alpha):
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    x = np.asarray(phi, dtype=np.float64)
    return v, w, x, float(alpha)


def appd_test_dual(values, weights, phi, test_phi, test_weight, alpha, s) -> float:
    """Test-point dual variable η_test of the App. D LP with the test score imputed at ``s`` (HiGHS)."""
    from scipy.optimize import linprog

    v, w, x, a = _prepare(values, weights, phi, alpha)
    tp = np.asarray(test_phi, dtype=np.float64)
    scale = w.sum() + test_weight  # normalise for the LP's tolerances
    w, tw = w / scale, test_weight / scale
    n = v.size
    c = -np.concatenate([v, [s]])  # maximise Σ η S
    a_eq = np.vstack([x, tp[None, :]]).T
    b_eq = np.zeros(a_eq.shape[0])
    bounds = [(-a * wi, (1 - a) * wi) for wi in w] + [(-a * tw, (1 - a) * tw)]
    res = linprog(c, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs", options=_HIGHS_TIGHT)
    if res.status != 0:
        raise RuntimeError(f"App. D LP failed: {res.message}")
    return float(res.x[n]) * scale


def phi_span(phi) -> int:
    """A generous bound on how far a fitted value can leave the score range (sums of group coefficients)."""
    return int(np.asarray(phi).shape[1]) + 1


def appd_threshold(values, weights, phi, test_phi, test_weight, alpha, tol: float = 1e-3, upper: float | None = None) -> float:
    """Largest S with test dual < (1 - α) w_test, by bisection to absolute tolerance ``tol`` (App. D).

    Returns the lower end of the final bracket (a score known to be admissible), or ``+inf`` when even ``upper``
    (default: max score + 1) is admissible.
    """
    v = np.asarray(values, dtype=np.float64)
    cap = (1 - float(alpha)) * test_weight
    slack = 1e-9 * max(abs(cap), 1e-300)

    def admissible(s: float) -> bool:
        return appd_test_dual(values, weights, phi, test_phi, test_weight, alpha, s) < cap - slack

    span = float(v.max() - v.min()) + 1.0
    hi = float(v.max()) + 4 * phi_span(phi) * span if upper is None else upper
    lo = float(v.min()) - 4 * phi_span(phi) * span
    if admissible(hi):
        return math.inf
    if not admissible(lo):
        return -math.inf
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if admissible(mid):
            lo = mid
        else:
            hi = mid
    return lo


def cvxpy_dual_threshold(values, weights, phi, test_phi, test_weight, alpha, tol: float = 1e-9) -> float:
    """Same bisection as :func:`appd_threshold` with the dual LP written in cvxpy (independent solver)."""
    import cvxpy as cp

    v, w, x, a = _prepare(values, weights, phi, alpha)
    tp = np.asarray(test_phi, dtype=np.float64)
    scale = w.sum() + test_weight
    w, tw = w / scale, test_weight / scale
    eta = cp.Variable(v.size)
    eta_t = cp.Variable()
    s_param = cp.Parameter()
    cons = [eta >= -a * w, eta <= (1 - a) * w, eta_t >= -a * tw, eta_t <= (1 - a) * tw, x.T @ eta + tp * eta_t == 0]
    prob = cp.Problem(cp.Maximize(v @ eta + s_param * eta_t), cons)
    cap = (1 - a) * tw

    def admissible(s: float) -> bool:
        s_param.value = s
        prob.solve(solver=cp.CLARABEL) if "CLARABEL" in cp.installed_solvers() else prob.solve()
        # interior-point solvers reach the cap only to ~1e-6 relative; the dual is a step function of s
        return float(eta_t.value) < cap * (1 - 1e-4)

    lo, hi = float(v.min()) - 1.0, float(v.max()) + 1.0
    if admissible(hi):
        return math.inf
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if admissible(mid) else (lo, mid)
    return lo
