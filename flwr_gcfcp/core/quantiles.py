"""Integer conformal ranks, the exact weighted conformal rule, client weights λ_k, and FedCP-QQ ranks.

All ranks are computed with integers or exact fractions: α is read at its decimal value (``0.1`` is ``1/10``) by
:func:`validation.alpha_fraction`, so ``ceil((n + 1)(1 - α))`` never suffers from ``10 * 0.9 = 9.000000000000002``-
type errors, and order statistics are taken with ``np.partition`` (``np.quantile(..., 'higher')`` at level k/n
returns the (k+1)-th statistic for most (n, α)).
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from functools import lru_cache
from numbers import Integral, Real
from typing import Sequence

import numpy as np

from .tdigest import _check_weights
from .validation import InsufficientDataWarning, alpha_fraction, check_scores, exact_fraction

__all__ = [
    "EXACT_QQ_LIMIT",
    "QQ_TOLERANCE",
    "client_lambdas",
    "conformal_rank",
    "fedcp_qq_client_ranks",
    "fedcp_qq_coverage",
    "fedcp_qq_ranks",
    "fedcp_qq_threshold",
    "integer_weights",
    "split_conformal_threshold",
    "weighted_conformal_threshold",
]


def _show(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_count(value: object, name: str, minimum: int = 0) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {_show(value)}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {_show(value)}")
    return int(value)


def _min_points(a: Fraction) -> int:
    """Smallest n with ceil((n + 1)(1 - α)) <= n, i.e. n >= (1 - α)/α."""
    return math.ceil((1 - a) / a)


# --------------------------------------------------------------------------------------------------------------
# split CP
# --------------------------------------------------------------------------------------------------------------
def conformal_rank(n: int, alpha: object) -> int:
    """Conformal rank ``k = ceil((n + 1)(1 - α))`` computed exactly.

    Parameters
    ----------
    n : int
        Number of calibration scores (>= 0).
    alpha : float or Fraction
        Miscoverage level in (0, 1), read exactly (``0.1`` is ``1/10``).

    Returns
    -------
    int
        The rank k (may exceed n, in which case the threshold is ``+inf``).
    """
    n = _check_count(n, "n")
    a = alpha_fraction(alpha)
    return math.ceil((n + 1) * (1 - a))


def split_conformal_threshold(scores: object, alpha: object) -> float:
    """Split-CP threshold: the k-th smallest score, ``k = ceil((n + 1)(1 - α))``.

    Returns ``+inf`` and emits :class:`InsufficientDataWarning` when ``k > n`` (fewer than ``(1 - α)/α`` scores).
    """
    a = alpha_fraction(alpha)
    s = check_scores(scores, name="scores", allow_empty=True)
    n = s.shape[0]
    k = conformal_rank(n, a)
    if k > n:
        warnings.warn(
            f"n={n} calibration scores are too few for alpha={alpha} (rank k={k} > n): at least "
            f"(1 - alpha)/alpha, i.e. {_min_points(a)}, points are needed; the threshold is +inf (full set)",
            InsufficientDataWarning,
            stacklevel=2,
        )
        return math.inf
    return float(np.partition(s, k - 1)[k - 1])


# --------------------------------------------------------------------------------------------------------------
# weighted rule
# --------------------------------------------------------------------------------------------------------------
def _exact_total(total_weight: object) -> Fraction | None:
    """Total weight as an exact rational when it is one (int, Fraction, integral float); else None."""
    if isinstance(total_weight, Fraction):
        return total_weight
    if isinstance(total_weight, Integral) and not isinstance(total_weight, (bool, np.bool_)):
        return Fraction(int(total_weight))
    if isinstance(total_weight, Real) and float(total_weight).is_integer():
        return Fraction(int(float(total_weight)))
    return None


def weighted_conformal_threshold(values: object, weights: object, alpha: object, total_weight: object) -> float:
    """Weighted conformal threshold ``min{ s in values : Σ_i w_i 1{v_i <= s} >= (1 - α) · total_weight }``.

    Parameters
    ----------
    values : array_like
        (N,) finite scores (may be empty: the result is then ``+inf``).
    weights : array_like
        (N,) positive weights. Integer weights (int64, or an object array of Python ints of any size) together
        with an integer or ``Fraction`` ``total_weight`` give an exact decision: with α = p/q the test is
        ``q · C(s) >= (q - p) · T`` in integers, i.e. ``C(s) >= ceil((1 - α) T)``. Float weights are supported
        but compared in float64 (cumulative sums in sorted order), so the decision is not exact when the
        cumulative weight ties with ``(1 - α) T`` up to rounding.
    alpha : float or Fraction
        Miscoverage level, read exactly.
    total_weight : int, Fraction or float
        The normaliser T (> 0); in GC-FCP/FCP it is the data weight plus the test point's weight.

    Returns
    -------
    float
        The threshold, or ``+inf`` with :class:`InsufficientDataWarning` when no score reaches the level.
    """
    a = alpha_fraction(alpha)
    v = check_scores(values, name="values", allow_empty=True)
    w = _check_weights(weights, v.shape[0], name="weights")
    if isinstance(total_weight, (bool, np.bool_)) or not isinstance(total_weight, (Real, Fraction)):
        raise ValueError(f"total_weight must be a positive number, got {_show(total_weight)}")
    if not (math.isfinite(float(total_weight)) and total_weight > 0):
        raise ValueError(f"total_weight must be finite and > 0, got {_show(total_weight)}")
    order = np.argsort(v, kind="stable")
    v_sorted = v[order]
    exact_total = _exact_total(total_weight)
    if w.dtype.kind != "f" and exact_total is not None:
        need = math.ceil((1 - a) * exact_total)  # Python int: C(s) >= need  <=>  C(s) >= (1 - α) T
        cum = np.cumsum(w[order]) if v.shape[0] else np.zeros(0, dtype=np.int64)
        if cum.dtype == object or need > np.iinfo(np.int64).max:
            from bisect import bisect_left

            idx = bisect_left(cum.tolist(), need)
        else:
            idx = int(np.searchsorted(cum, max(need, 0), side="left"))
    else:
        level = float(1 - a) * float(total_weight)
        cum = np.cumsum(w[order].astype(np.float64))
        idx = int(np.searchsorted(cum, level, side="left"))
    if idx >= v.shape[0]:
        warnings.warn(
            f"weighted calibration mass is too small for alpha={alpha}: no score reaches (1 - alpha) of "
            f"total_weight={_show(total_weight)} over {v.shape[0]} weighted scores; the threshold is +inf (full set)",
            InsufficientDataWarning,
            stacklevel=2,
        )
        return math.inf
    return float(v_sorted[idx])


# --------------------------------------------------------------------------------------------------------------
# client weights
# --------------------------------------------------------------------------------------------------------------
def client_lambdas(n_per_client: Sequence[int], pi: Sequence[object] | None = None) -> list[Fraction]:
    """Per-point client weights ``λ_k = π_k / (n_k + 1)`` as exact fractions.

    Parameters
    ----------
    n_per_client : sequence of int
        Calibration sizes n_k >= 0.
    pi : sequence of numbers or None
        Mixture weights π_k >= 0, not all zero; normalised exactly to sum to 1. Floats are read at their decimal
        value (``0.1`` is ``1/10``). None means uniform ``1/K``.

    Returns
    -------
    list of Fraction
    """
    if isinstance(n_per_client, (str, bytes)) or not hasattr(n_per_client, "__len__"):
        raise ValueError(f"n_per_client must be a sequence of integers, got {_show(n_per_client)}")
    ns = [_check_count(n, f"n_per_client[{i}]") for i, n in enumerate(list(n_per_client))]
    if not ns:
        raise ValueError("n_per_client must name at least one client, got an empty sequence")
    if pi is None:
        pis = [Fraction(1, len(ns))] * len(ns)
    else:
        pi_list = list(pi)
        if len(pi_list) != len(ns):
            raise ValueError(f"pi must have one entry per client ({len(ns)}), got {len(pi_list)}: {_show(pi_list)}")
        pis = [exact_fraction(p, f"pi[{i}]") for i, p in enumerate(pi_list)]
        for i, p in enumerate(pis):
            if p < 0:
                raise ValueError(f"pi[{i}] must be >= 0, got {_show(pi_list[i])}")
        total = sum(pis)
        if total == 0:
            raise ValueError(f"pi must not be all zero, got {_show(pi_list)}")
        pis = [p / total for p in pis]
    return [p / (n + 1) for p, n in zip(pis, ns)]


def integer_weights(lambdas: Sequence[object]) -> tuple[int, list[int]]:
    """Common denominator D (least common multiple) and integer numerators ``D · λ_k`` (Python ints).

    Parameters
    ----------
    lambdas : sequence of Fraction (or numbers read exactly)
        Non-negative weights.

    Returns
    -------
    (int, list of int)
        ``D`` and ``[D · λ_k]``; Python ints, which may exceed the int64 range.
    """
    fracs = [exact_fraction(x, f"lambdas[{i}]") for i, x in enumerate(list(lambdas))]
    if not fracs:
        raise ValueError("lambdas must not be empty")
    for i, f in enumerate(fracs):
        if f < 0:
            raise ValueError(f"lambdas[{i}] must be >= 0, got {f}")
    denom = math.lcm(*(f.denominator for f in fracs))
    return denom, [int(f * denom) for f in fracs]


# --------------------------------------------------------------------------------------------------------------
# FedCP-QQ (Humbert et al., 2023)
# --------------------------------------------------------------------------------------------------------------
#: Above this m·n the exact rational M(k, ℓ) is not computed; see :func:`fedcp_qq_ranks`.
EXACT_QQ_LIMIT = 600
#: Width of the band around 1 - α inside which a float M(k, ℓ) is not trusted.
QQ_TOLERANCE = 1e-10


@lru_cache(maxsize=None)
def _coverage_float(k: int, ell: int, n: int, m: int) -> float:
    from scipy import integrate, special

    if m == 1:
        return ell / (n + 1)

    def integrand(u: float) -> float:
        # P(U_(k) > u) = P(Bin(m, G(u)) <= k - 1), 1 - G(u) = P(Bin(n, u) <= ℓ - 1)
        return float(special.betainc(m - k + 1, k, special.betaincc(ell, n - ell + 1, u)))

    median = float(special.betaincinv(ell, n - ell + 1, special.betaincinv(k, m - k + 1, 0.5)))
    spread = math.sqrt(ell * (n - ell + 1) / ((n + 1) ** 2 * (n + 2)))
    points = sorted({min(max(median + c * spread, 1e-300), 1 - 1e-16) for c in (-4.0, -1.0, 0.0, 1.0, 4.0)})
    value, _ = integrate.quad(integrand, 0.0, 1.0, points=points, epsabs=1e-14, epsrel=1e-13, limit=500)
    return float(value)


@lru_cache(maxsize=None)
def _coverage_exact(k: int, ell: int, n: int, m: int) -> Fraction:
    # counts of r-subsets of the m·n calibration scores lying below the test score, by the clients whose ℓ-th
    # smallest is below it: per client A(x) = Σ_{i<ℓ} C(n,i) x^i (fewer than ℓ below), B(x) = Σ_{i>=ℓ} C(n,i) x^i
    low = [math.comb(n, i) for i in range(ell)] + [0] * (n + 1 - ell)
    high = [0] * ell + [math.comb(n, i) for i in range(ell, n + 1)]

    def mul(p: list[int], q: list[int]) -> list[int]:
        out = [0] * (len(p) + len(q) - 1)
        for i, a in enumerate(p):
            if a:
                for j, b in enumerate(q):
                    out[i + j] += a * b
        return out

    low_pow = [[1]]
    high_pow = [[1]]
    for _ in range(m):
        low_pow.append(mul(low_pow[-1], low))
        high_pow.append(mul(high_pow[-1], high))
    total = m * n
    acc = Fraction(0)
    for t in range(k):  # at most k - 1 client statistics below the test score
        poly = mul(high_pow[t], low_pow[m - t])
        acc += math.comb(m, t) * sum(Fraction(c, math.comb(total, r)) for r, c in enumerate(poly) if c)
    return acc / (total + 1)


def fedcp_qq_coverage(k: int, ell: int, n_per_client: int, n_clients: int, exact: bool = False) -> float | Fraction:
    """Exact coverage M(k, ℓ) of the FedCP-QQ quantile-of-quantiles threshold.

    Each of m clients holds n exchangeable scores and sends its ℓ-th smallest; the server takes the k-th smallest
    of the m values. With a test score exchangeable with all m·n calibration scores (continuous, no ties), let R
    be the number of calibration scores below the test score: R is uniform on {0, ..., mn} and, given R = r, the
    r scores are a uniformly random r-subset. The test is covered iff at most k - 1 clients have at least ℓ of
    their scores below it, so

        M(k, ℓ) = 1/(mn+1) Σ_r Σ_{t<k} C(m, t) [x^r] B(x)^t A(x)^(m-t) / C(mn, r),

    with ``A(x) = Σ_{i<ℓ} C(n,i) x^i`` and ``B(x) = Σ_{i>=ℓ} C(n,i) x^i`` (a multivariate-hypergeometric sum).
    Equivalently ``M(k, ℓ) = E[U_(k)] = ∫_0^1 P(Bin(m, G(u)) <= k - 1) du`` with ``G(u) = P(Bin(n, u) >= ℓ)``,
    i.e. the mean of the k-th smallest of m i.i.d. Beta(ℓ, n - ℓ + 1) variables; the float path integrates this
    with adaptive quadrature (absolute error about 1e-13). ``exact=True`` returns the rational value (polynomial
    in m·n: small cases only). m = 1 gives ``ℓ/(n + 1)``. Results are cached.
    """
    n = _check_count(n_per_client, "n_per_client", 1)
    m = _check_count(n_clients, "n_clients", 1)
    k = _check_count(k, "k", 1)
    ell = _check_count(ell, "ell", 1)
    if k > m:
        raise ValueError(f"k must be <= n_clients={m}, got {k}")
    if ell > n:
        raise ValueError(f"ell must be <= n_per_client={n}, got {ell}")
    if m == 1:
        value = Fraction(ell, n + 1)
        return value if exact else float(value)
    return _coverage_exact(k, ell, n, m) if exact else _coverage_float(k, ell, n, m)


def _covers(k: int, ell: int, n: int, m: int, target: Fraction) -> bool:
    """Whether M(k, ℓ) >= target; exact inside the float-uncertainty band when m·n is small, else conservative."""
    if m == 1:
        return Fraction(ell, n + 1) >= target
    value = _coverage_float(k, ell, n, m)
    t = float(target)
    if value >= t + QQ_TOLERANCE:
        return True
    if value < t - QQ_TOLERANCE:
        return False
    if m * n <= EXACT_QQ_LIMIT:
        return _coverage_exact(k, ell, n, m) >= target
    return False  # cannot certify M >= 1 - α in floating point: refuse the cell (conservative)


@lru_cache(maxsize=4096)
def _qq_ranks(n: int, m: int, a: Fraction) -> tuple[int, int]:
    target = 1 - a
    if Fraction(m * n, m * n + 1) < target:  # M(m, n) = mn/(mn + 1) is the largest coverage
        raise ValueError(
            f"FedCP-QQ cannot reach coverage 1 - alpha = {target} with n_clients={m} and n_per_client={n}: the "
            f"largest achievable coverage is mn/(mn+1) = {m * n}/{m * n + 1}; m·n >= (1 - alpha)/alpha = "
            f"{_min_points(a)} calibration points are needed (alpha={float(a)})"
        )
    best: tuple[float, int, int] | None = None
    hi = n
    for k in range(1, m + 1):
        if not _covers(k, hi, n, m, target):
            continue
        lo = 1
        while lo < hi:  # smallest ℓ in [1, hi] with M(k, ℓ) >= 1 - α (M increases with ℓ and with k)
            mid = (lo + hi) // 2
            if _covers(k, mid, n, m, target):
                hi = mid
            else:
                lo = mid + 1
        value = float(Fraction(hi, n + 1)) if m == 1 else _coverage_float(k, hi, n, m)
        if best is None or value < best[0]:
            best = (value, k, hi)
    if best is None:  # only possible when every cell sits inside the float band of a large problem
        raise ValueError(
            f"FedCP-QQ: no (k, ell) certified to reach coverage {float(target)} with n_clients={m}, "
            f"n_per_client={n}, alpha={float(a)}"
        )
    return best[1], best[2]


def fedcp_qq_ranks(n_per_client: int, n_clients: int, alpha: object) -> tuple[int, int]:
    """FedCP-QQ ranks (k, ℓ): the cell whose coverage M(k, ℓ) is the smallest value >= 1 - α.

    For each k the smallest ℓ with ``M(k, ℓ) >= 1 - α`` is found by bisection (M increases in both k and ℓ); the
    chosen cell minimises M over these (ties: smallest k). ``M >= 1 - α`` is decided with a float M, and exactly
    (rational arithmetic) when the float lies within ``QQ_TOLERANCE`` of 1 - α and ``m·n <= EXACT_QQ_LIMIT``;
    for larger problems such a borderline cell is refused (conservative). With one client this is split CP:
    ``(1, ceil((n + 1)(1 - α)))``.

    Parameters
    ----------
    n_per_client : int
        Calibration points per client n (unequal sizes: pass ``min n_k`` and use :func:`fedcp_qq_client_ranks`).
    n_clients : int
        Number of clients m.
    alpha : float or Fraction
        Miscoverage level.

    Raises
    ------
    ValueError
        When no cell reaches 1 - α, i.e. ``m·n < (1 - α)/α`` (the message says how many points are needed).
    """
    n = _check_count(n_per_client, "n_per_client", 1)
    m = _check_count(n_clients, "n_clients", 1)
    return _qq_ranks(n, m, alpha_fraction(alpha))


def fedcp_qq_client_ranks(n_per_client: Sequence[int], alpha: object) -> tuple[int, list[int]]:
    """FedCP-QQ with unequal client sizes: server rank k and one order-statistic rank per client.

    Rule: (k, ℓ) are chosen for ``n = min_j n_j`` and client j sends its ``(ℓ + n_j - n)``-th smallest score, i.e.
    the same rank counted from the top (its ``(n - ℓ + 1)``-th largest). The (n - ℓ + 1)-th largest of a superset
    is pointwise at least the (n - ℓ + 1)-th largest of any n-subset, so every client statistic is at least what
    the equal-size analysis assumes and the coverage stays ``>= M(k, ℓ) >= 1 - α`` (i.i.d. scores).
    """
    ns = [_check_count(n, f"n_per_client[{i}]", 1) for i, n in enumerate(list(n_per_client))]
    if not ns:
        raise ValueError("n_per_client must name at least one client, got an empty sequence")
    n_min = min(ns)
    k, ell = fedcp_qq_ranks(n_min, len(ns), alpha)
    return k, [ell + n - n_min for n in ns]


def fedcp_qq_threshold(client_order_stats: object, k: int) -> float:
    """Server step of FedCP-QQ: the k-th smallest of the clients' order statistics (``+inf`` entries allowed)."""
    arr = np.asarray(client_order_stats, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("client_order_stats must not be empty")
    if np.isnan(arr).any():
        raise ValueError(f"client_order_stats must not contain NaN, got {_show(arr.tolist())}")
    k = _check_count(k, "k", 1)
    if k > arr.size:
        raise ValueError(f"k must be <= the number of client statistics ({arr.size}), got {k}")
    return float(np.partition(arr, k - 1)[k - 1])
