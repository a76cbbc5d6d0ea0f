"""Predictor arrays: what the server sends in the evaluation round, how a client turns them into set masks, and
the saved class-conditional / set-valued predictor (:class:`ArraysPredictor`).

Rule 0 (no ``rule`` key): per-atom thresholds of the group / marginal methods. Rule 1: per-label thresholds
(class-conditional). Rule 2: a fitted set-valued rule on the probability rows (``offset``, the point-wise error
offset r, is absent from arrays written before it existed and then read as 0).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..core.groups import GroupSpec, pattern_keys
from ..core.metrics import to_jsonable
from ..core.summaries import PayloadError
from ..core.validation import InsufficientDataWarning, check_scores
from .base import Calibrator
from .setvalued import FRAMEWORKS, SetValuedClassifier

__all__ = ["ArraysPredictor", "RULE_ATOMS", "RULE_LABELS", "RULE_SETVALUED", "predictor_arrays", "set_mask_from_arrays", "thresholds_from_arrays"]

RULE_ATOMS, RULE_LABELS, RULE_SETVALUED = 0, 1, 2


def predictor_arrays(calibrator: Calibrator) -> dict[str, np.ndarray]:
    """Per-atom thresholds as arrays (sent to clients in the conformal evaluation round).

    Class-conditional and set-valued calibrators give their own arrays (per-label thresholds, or the set-valued
    rule), with a ``rule`` entry; clients apply any of them with
    :func:`set_mask_from_arrays`.
    """
    if hasattr(calibrator, "predictor_arrays"):
        return calibrator.predictor_arrays()
    thr = calibrator.thresholds
    keys = np.asarray(list(thr.keys()), dtype=np.int64)
    return {
        "keys": keys,
        "thresholds": np.asarray([thr[k] for k in keys.tolist()], dtype=np.float64),
        "constant": np.array([calibrator._constant is not None], dtype=np.int64),
    }


def thresholds_from_arrays(arrays: Mapping[str, np.ndarray], features, groups: GroupSpec | None, n: int | None = None) -> np.ndarray:
    """Client side of the evaluation round: per-point thresholds from :func:`predictor_arrays`.

    A pattern absent from the arrays (possible only for non-enumerable group families) gets ``+inf`` (full set)
    with a warning.
    """
    if int(np.asarray(arrays.get("rule", [0])).reshape(-1)[0]) != 0:
        raise PayloadError(
            "these predictor arrays hold per-label thresholds or a set-valued rule, not per-point thresholds: "
            "use set_mask_from_arrays"
        )
    keys_arr = np.asarray(arrays["keys"], dtype=np.int64)
    thr = np.asarray(arrays["thresholds"], dtype=np.float64)
    if keys_arr.shape != thr.shape:
        raise PayloadError(f"keys and thresholds differ in shape: {keys_arr.shape} vs {thr.shape}")
    if int(np.asarray(arrays.get("constant", [0]))[0]) == 1 or groups is None:
        count = n if n is not None else len(features)
        return np.full(int(count), float(thr[0]))
    keys = pattern_keys(groups.membership(features))
    lookup = dict(zip(keys_arr.tolist(), thr.tolist()))
    out = np.array([lookup.get(k, math.inf) for k in keys.tolist()], dtype=np.float64)
    unknown = sum(1 for k in set(keys.tolist()) if k not in lookup)
    if unknown:
        warnings.warn(f"{unknown} atom pattern(s) without a threshold: full sets there", InsufficientDataWarning, stacklevel=2)
    return out


# ------------------------------------------------------------------------------------------------ evaluation
def _setvalued_from_arrays(arrays: Mapping[str, np.ndarray]) -> SetValuedClassifier:
    fw_idx = int(np.asarray(arrays["framework"]).reshape(-1)[0])
    if not 0 <= fw_idx < len(FRAMEWORKS):
        raise PayloadError(f"framework index {fw_idx} out of range")
    fw = FRAMEWORKS[fw_idx]
    eps, lam, k_bar, beta = (float(x) for x in np.asarray(arrays["params"], dtype=np.float64).reshape(-1)[:4])
    k = int(np.asarray(arrays["k"]).reshape(-1)[0])
    ts = bool(int(np.asarray(arrays.get("temperature_scaling", [1])).reshape(-1)[0]))
    offset = float(np.asarray(arrays.get("offset", [0.0]), dtype=np.float64).reshape(-1)[0])  # absent in older arrays

    def opt(x):
        return None if math.isnan(x) else x

    model = SetValuedClassifier(
        fw, k=k if k > 0 else None, epsilon=opt(eps), lam=opt(lam), k_bar=opt(k_bar), beta=opt(beta), temperature_scaling=ts,
        offset=offset,
    )
    thr = float(np.asarray(arrays["threshold"], dtype=np.float64).reshape(-1)[0])
    if not math.isnan(thr):
        model.threshold_ = thr
    model.temperature_ = float(np.asarray(arrays["temperature"], dtype=np.float64).reshape(-1)[0])
    model._fitted = True
    return model


def set_mask_from_arrays(
    arrays: Mapping[str, np.ndarray], score_matrix=None, features=None, groups=None, probs=None
) -> np.ndarray:
    """Client side of the evaluation round: the ``(n, L)`` set mask of one method from :func:`predictor_arrays`.

    Rule 0 (no ``rule`` key; every group / marginal method): ``score <= threshold[atom(x)]`` through
    :func:`thresholds_from_arrays`. Rule 1 (class-conditional): ``score[:, y] <= q[y]``.
    Rule 2 (set-valued): the framework's rule on ``probs``.
    """
    rule = int(np.asarray(arrays.get("rule", [RULE_ATOMS])).reshape(-1)[0])
    if rule == RULE_ATOMS:
        sm = check_scores(score_matrix, name="score_matrix", ndim=2)
        thr = thresholds_from_arrays(arrays, features, groups, n=sm.shape[0])
        return sm <= np.asarray(thr, dtype=np.float64)[:, None]
    if rule == RULE_LABELS:
        sm = check_scores(score_matrix, name="score_matrix", ndim=2)
        q = np.asarray(arrays["label_thresholds"], dtype=np.float64).reshape(-1)
        if q.size != sm.shape[1]:
            raise PayloadError(f"label_thresholds has {q.size} entries for a score matrix with {sm.shape[1]} labels")
        return sm <= q[None, :]
    if rule == RULE_SETVALUED:
        if probs is None:
            raise ValueError("a set-valued method needs the probability rows: set_mask_from_arrays(..., probs=...)")
        return _setvalued_from_arrays(arrays).predict(probs)
    raise PayloadError(f"unknown predictor rule {rule}")


# ------------------------------------------------------------------------------------------------ saved predictor
FORMAT = "flwr-gcfcp-arrays-predictor/1"


def predictor_dict(cal: Calibrator) -> dict:
    arrays = cal.predictor_arrays()
    thr = cal.thresholds
    return {
        "format": FORMAT,
        "method": cal.name,
        "private": bool(cal.private),
        "alpha": str(cal.alpha),
        "thresholds": {str(k): (v if math.isfinite(v) else str(v)) for k, v in thr.items()},
        "info": to_jsonable(cal.info()),
        "arrays": {k: to_jsonable(np.asarray(v).tolist()) for k, v in arrays.items()},
        "dtypes": {k: str(np.asarray(v).dtype) for k, v in arrays.items()},
    }


class ArraysPredictor:
    """Loads a saved class-conditional / set-valued predictor (``predictor_<NAME>.json``) and builds sets."""

    def __init__(self, method: str, arrays: Mapping[str, np.ndarray]) -> None:
        self.method = method
        self.arrays = dict(arrays)

    @classmethod
    def from_dict(cls, data: Mapping) -> "ArraysPredictor":
        if data.get("format") != FORMAT:
            raise ValueError(f"not a flwr-gcfcp arrays predictor (format {data.get('format')!r}, expected {FORMAT!r})")
        dtypes = data.get("dtypes", {})
        arrays = {}
        for k, v in data["arrays"].items():
            vals = [float(x) if isinstance(x, str) else x for x in v]
            arrays[k] = np.asarray(vals, dtype=dtypes.get(k, None))
        return cls(data["method"], arrays)

    @classmethod
    def load(cls, path: str | Path) -> "ArraysPredictor":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def predict(self, score_matrix=None, features=None, probs=None) -> np.ndarray:
        return set_mask_from_arrays(self.arrays, score_matrix, features, None, probs=probs)
