"""Predictor arrays: what the server sends in the evaluation round, how a client turns them into set masks, and
the saved class-conditional / set-valued predictor (:class:`ArraysPredictor`).

Rule 0 (no ``rule`` key): per-atom thresholds of the group / marginal methods. Rule 1: per-label thresholds
(class-conditional). Rule 2: a fitted set-valued rule on the probability rows (``offset``, the point-wise error
offset r, is absent from arrays written before it existed and then read as 0).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np

from ..core.groups import GroupSpec
from ..core.metrics import to_jsonable
from ..core.predictor import SealedPredictor, check_keys, integrity_error, seal, threshold_value
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
    keys = groups.atom_keys(features)
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
FORMAT = "flwr-gcfcp-arrays-predictor/2"
_UNSEALED_FORMATS = ("flwr-gcfcp-arrays-predictor/1",)

#: array name -> dtype, per rule (exactly these arrays)
_RULE_ARRAYS = {
    RULE_LABELS: {"rule": "int64", "label_thresholds": "float64"},
    RULE_SETVALUED: {"rule": "int64", "framework": "int64", "k": "int64", "params": "float64", "threshold": "float64",
                     "temperature": "float64", "temperature_scaling": "int64", "offset": "float64"},
}
_ARRAY_SIZES = {"rule": 1, "framework": 1, "k": 1, "params": 4, "threshold": 1, "temperature": 1,
                "temperature_scaling": 1, "offset": 1}


def _json_threshold(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def predictor_content(cal: Calibrator) -> dict:
    """The JSON content of a class-conditional / set-valued predictor (sealed by :func:`predictor_dict`)."""
    arrays = {k: np.asarray(v) for k, v in cal.predictor_arrays().items()}
    thr = cal.thresholds
    lower = None
    if int(arrays["rule"].reshape(-1)[0]) == RULE_LABELS:
        finite = [v for v in thr.values() if math.isfinite(v)]
        lower = 0.0 if all(v >= 0 for v in finite) else None
    return {
        "format": FORMAT,
        "method": cal.name,
        "private": bool(cal.private),
        "alpha": str(cal.alpha),
        "score_lower_bound": lower,
        "thresholds": {str(k): _json_threshold(float(v)) for k, v in thr.items()},
        "info": to_jsonable(cal.info()),
        "arrays": {k: to_jsonable(v.tolist()) for k, v in arrays.items()},
        "dtypes": {k: str(v.dtype) for k, v in arrays.items()},
    }


def predictor_dict(cal: Calibrator, key: bytes | str | None = None) -> dict:
    """The saved predictor of a class-conditional / set-valued calibrator: its content sealed with a SHA-256 (and an
    HMAC-SHA256 with ``key``), loaded back by :class:`ArraysPredictor` (see :mod:`flwr_gcfcp.core.predictor`)."""
    return seal(predictor_content(cal), key)


def _read_array(name: str, values: object, dtype: str, lower: float | None) -> np.ndarray:
    where = f"arrays.{name}"
    if not isinstance(values, list) or len(values) == 0:
        raise integrity_error(where, f"must be a non-empty list, got {str(values)[:60]!r}")
    size = _ARRAY_SIZES.get(name)
    if size is not None and len(values) != size:
        raise integrity_error(where, f"must have {size} entr{'y' if size == 1 else 'ies'}, got {len(values)}")
    if dtype == "int64":
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, int) or not -(2**63) <= v < 2**63:
                raise integrity_error(f"{where}[{i}]", f"must be an int64 integer, got {v!r}")
        return np.asarray(values, dtype=np.int64)
    if name == "label_thresholds":
        return np.asarray([threshold_value(v, f"{where}[{i}]", lower) for i, v in enumerate(values)])
    out = []
    for i, v in enumerate(values):  # set-valued parameters: "nan" = unset, otherwise finite
        out.append(threshold_value(v, f"{where}[{i}]", None, allow_unset=True))
        if math.isinf(out[-1]):
            raise integrity_error(f"{where}[{i}]", f"must be finite (or 'nan' for unset), got {v!r}")
    return np.asarray(out, dtype=np.float64)


class ArraysPredictor(SealedPredictor):
    """A saved class-conditional / set-valued predictor (``predictor_<NAME>.json``): builds sets after loading.

    Parameters
    ----------
    method : str
        Calibrator name.
    arrays : mapping of str to numpy.ndarray
        The predictor arrays (rule 1: per-label thresholds; rule 2: a set-valued rule).
    private, alpha, score_lower_bound, thresholds, info
        The rest of the saved content (see :func:`predictor_content`).
    """

    FORMAT = FORMAT
    UNSEALED_FORMATS = _UNSEALED_FORMATS
    KEYS = ("format", "method", "private", "alpha", "score_lower_bound", "thresholds", "info", "arrays", "dtypes")
    KIND = "flwr-gcfcp arrays predictor"

    def __init__(self, method: str, arrays: Mapping[str, np.ndarray], private: bool = True, alpha: str | None = None,
                 score_lower_bound: float | None = None, thresholds: Mapping | None = None,
                 info: Mapping | None = None) -> None:
        self.method = method
        self.arrays = dict(arrays)
        self.private = private
        self.alpha = alpha
        self.score_lower_bound = score_lower_bound
        self.thresholds = dict(thresholds or {})
        self.info = dict(info or {})

    @classmethod
    def from_calibrator(cls, cal: Calibrator) -> "ArraysPredictor":
        """Capture a fitted class-conditional / set-valued calibrator."""
        return cls.from_dict(predictor_dict(cal))

    def content(self) -> dict:
        """The JSON content that is sealed."""
        return {
            "format": FORMAT,
            "method": self.method,
            "private": bool(self.private),
            "alpha": self.alpha,
            "score_lower_bound": self.score_lower_bound,
            "thresholds": {str(k): _json_threshold(float(v)) for k, v in self.thresholds.items()},
            "info": to_jsonable(self.info),
            "arrays": {k: to_jsonable(np.asarray(v).tolist()) for k, v in self.arrays.items()},
            "dtypes": {k: str(np.asarray(v).dtype) for k, v in self.arrays.items()},
        }

    @classmethod
    def _from_content(cls, c: dict) -> "ArraysPredictor":
        method, lower = cls._read_common(c)
        if not isinstance(c["info"], Mapping):
            raise integrity_error("info", f"must be an object, got {type(c['info']).__name__}")
        raw, dtypes = c["arrays"], c["dtypes"]
        if not isinstance(raw, Mapping) or not isinstance(dtypes, Mapping):
            raise integrity_error("arrays", "arrays and dtypes must be objects")
        rule_raw = raw.get("rule")
        if not (isinstance(rule_raw, list) and len(rule_raw) == 1 and rule_raw[0] in _RULE_ARRAYS
                and not isinstance(rule_raw[0], bool)):
            raise integrity_error(
                "arrays.rule", f"must be [{RULE_LABELS}] (per-label thresholds) or [{RULE_SETVALUED}] "
                f"(set-valued rule), got {str(rule_raw)[:40]}; per-atom predictors load with "
                "flwr_gcfcp.Predictor"
            )
        rule = int(rule_raw[0])
        expected = _RULE_ARRAYS[rule]
        check_keys(raw, tuple(expected), "arrays")
        check_keys(dtypes, tuple(expected), "dtypes")
        for name, dtype in expected.items():
            if dtypes[name] != dtype:
                raise integrity_error(f"dtypes.{name}", f"must be {dtype!r}, got {dtypes[name]!r}")
        arrays = {name: _read_array(name, raw[name], dtype, lower) for name, dtype in expected.items()}
        if rule == RULE_LABELS:
            listed = arrays["label_thresholds"].tolist()
        else:
            fw = int(arrays["framework"][0])
            if not 0 <= fw < len(FRAMEWORKS):
                raise integrity_error("arrays.framework", f"framework index {fw} is outside [0, {len(FRAMEWORKS)})")
            if int(arrays["temperature_scaling"][0]) not in (0, 1):
                raise integrity_error("arrays.temperature_scaling",
                                      f"must be 0 or 1, got {int(arrays['temperature_scaling'][0])}")
            if int(arrays["k"][0]) < 0:
                raise integrity_error("arrays.k", f"must be >= 0 (0 = unset), got {int(arrays['k'][0])}")
            offset = float(arrays["offset"][0])
            if not (math.isfinite(offset) and offset >= 0):
                raise integrity_error("arrays.offset", f"must be finite and >= 0, got {offset!r}")
            temp = float(arrays["temperature"][0])
            if not temp > 0:
                raise integrity_error("arrays.temperature", f"must be > 0, got {temp!r}")
            try:
                _setvalued_from_arrays(arrays)
            except ValueError as err:
                raise integrity_error("arrays", f"not a valid set-valued rule: {err}") from None
            listed = [float(arrays["threshold"][0])]
        thresholds = c["thresholds"]
        if not isinstance(thresholds, Mapping):
            raise integrity_error("thresholds", f"must be an object, got {type(thresholds).__name__}")
        check_keys(thresholds, tuple(str(i) for i in range(len(listed))), "thresholds")
        for i, v in enumerate(listed):
            where = f"thresholds[{str(i)!r}]"
            saved = threshold_value(thresholds[str(i)], where, lower, allow_unset=rule == RULE_SETVALUED)
            if not (saved == v or (math.isnan(saved) and math.isnan(v))):
                raise integrity_error(where, f"{saved!r} disagrees with the predictor arrays ({v!r})")
        return cls(method, arrays, c["private"], c["alpha"], lower, {i: v for i, v in enumerate(listed)}, c["info"])

    def predict(self, score_matrix=None, features=None, probs=None) -> np.ndarray:
        """Boolean (n, L) set mask: per-label thresholds on ``score_matrix``, or the set-valued rule on ``probs``."""
        return set_mask_from_arrays(self.arrays, score_matrix, features, None, probs=probs)
