"""Coverage and size metrics, per-client evaluation counts and their mixture-weighted aggregation.

Under the mixture P = Σ_k π_k P_k, coverage in group G is ``Σ_k π_k c_k(G)/n_k / Σ_k π_k n_k(G)/n_k`` where client k
has n_k test points, n_k(G) of them in G and c_k(G) of those covered; set sizes aggregate the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .validation import alpha_fraction

__all__ = [
    "aggregate_counts",
    "class_coverage",
    "coverage_report",
    "covgap",
    "evaluation_counts",
    "frac_undercov",
    "to_jsonable",
]


def _check_mask(set_mask: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = np.asarray(set_mask, dtype=bool)
    y = np.asarray(labels, dtype=np.int64)
    if mask.ndim != 2 or y.shape != (mask.shape[0],):
        raise ValueError(f"set_mask must be (n, L) and labels (n,), got {mask.shape} and {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= mask.shape[1]):
        raise ValueError(f"labels must lie in [0, {mask.shape[1]}), got {y.min()}..{y.max()}")
    return mask, y


def evaluation_counts(set_mask, labels, membership=None) -> dict[str, np.ndarray]:
    """Counts a client reports in the conformal evaluation round (no raw data).

    Returns int64 arrays: ``n`` (1,), ``covered`` (1,), ``size_sum`` (1,), per group ``group_n``, ``group_covered``,
    ``group_size_sum`` (d,), and per class ``class_n``, ``class_covered`` (L,).
    """
    mask, y = _check_mask(set_mask, labels)
    covered = mask[np.arange(y.size), y]
    sizes = mask.sum(axis=1)
    member = np.ones((y.size, 0), dtype=bool) if membership is None else np.asarray(membership, dtype=bool)
    if member.shape[0] != y.size:
        raise ValueError(f"membership has {member.shape[0]} rows for {y.size} points")
    n_labels = mask.shape[1]
    return {
        "n": np.array([y.size], dtype=np.int64),
        "covered": np.array([covered.sum()], dtype=np.int64),
        "size_sum": np.array([sizes.sum()], dtype=np.int64),
        "group_n": member.sum(axis=0).astype(np.int64),
        "group_covered": (member & covered[:, None]).sum(axis=0).astype(np.int64),
        "group_size_sum": (member * sizes[:, None]).sum(axis=0).astype(np.int64),
        "class_n": np.bincount(y, minlength=n_labels).astype(np.int64),
        "class_covered": np.bincount(y, weights=covered, minlength=n_labels).astype(np.int64),
    }


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def aggregate_counts(counts_by_client: Mapping[str, Mapping[str, np.ndarray]], pi: Mapping[str, float] | None = None) -> dict:
    """Mixture-weighted coverage and set size from per-client :func:`evaluation_counts` (π uniform by default)."""
    clients = [c for c, v in counts_by_client.items() if int(np.asarray(v["n"])[0]) > 0]
    if not clients:
        raise ValueError("no client reported any evaluation point")
    if pi is not None:
        missing = [c for c in clients if c not in pi]
        if missing:
            raise ValueError(f"pi has no weight for clients {missing}")
    weights = np.array([1.0 if pi is None else float(pi[c]) for c in clients])
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"pi must be finite, >= 0 and not all zero, got {dict(zip(clients, weights.tolist()))}")
    weights = weights / weights.sum()

    def mix(field: str) -> np.ndarray:
        return sum(w * np.asarray(counts_by_client[c][field], dtype=np.float64) / float(np.asarray(counts_by_client[c]["n"])[0]) for c, w in zip(clients, weights))

    g_n, g_cov, g_size = mix("group_n"), mix("group_covered"), mix("group_size_sum")
    c_n, c_cov = mix("class_n"), mix("class_covered")
    return {
        "marginal_coverage": float(mix("covered")[0]),
        "marginal_set_size": float(mix("size_sum")[0]),
        "group_coverage": [_ratio(a, b) for a, b in zip(g_cov, g_n)],
        "group_set_size": [_ratio(a, b) for a, b in zip(g_size, g_n)],
        "group_mass": [float(x) for x in g_n],
        "class_coverage": [_ratio(a, b) for a, b in zip(c_cov, c_n)],
        "n": int(sum(int(np.asarray(counts_by_client[c]["n"])[0]) for c in clients)),
        "clients": clients,
    }


def class_coverage(set_mask, labels) -> np.ndarray:
    """Empirical coverage per class (NaN for classes absent from ``labels``)."""
    mask, y = _check_mask(set_mask, labels)
    covered = mask[np.arange(y.size), y]
    n = np.bincount(y, minlength=mask.shape[1]).astype(float)
    hit = np.bincount(y, weights=covered, minlength=mask.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, hit / n, np.nan)


def coverage_report(set_mask, labels, membership=None, group_names: Sequence[str] | None = None) -> dict:
    """Marginal and per-group coverage / mean set size, per-class coverage (unweighted, one data set)."""
    counts = evaluation_counts(set_mask, labels, membership)
    out = aggregate_counts({"all": counts})
    out.pop("clients")
    if group_names is not None:
        out["group_names"] = list(group_names)
    return out


def covgap(class_cov: Sequence[float], alpha: float) -> float:
    """CovGap (Ding et al.): mean over classes of |ĉ_y - (1 - α)|, in percentage points; NaN classes ignored."""
    cov = np.asarray(class_cov, dtype=float)
    cov = cov[np.isfinite(cov)]
    target = 1 - float(alpha_fraction(alpha))
    return float(100 * np.mean(np.abs(cov - target))) if cov.size else math.nan


def frac_undercov(class_cov: Sequence[float], alpha: float, margin: float = 0.1) -> float:
    """Fraction of classes with ĉ_y <= 1 - α - margin (Ding et al.)."""
    cov = np.asarray(class_cov, dtype=float)
    cov = cov[np.isfinite(cov)]
    target = 1 - float(alpha_fraction(alpha)) - margin
    return float(np.mean(cov <= target)) if cov.size else math.nan


def to_jsonable(obj):
    """Convert numpy types, tuples and non-finite floats (as "inf"/"-inf"/"nan") for ``json.dump``."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if math.isfinite(x):
            return x
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return obj
