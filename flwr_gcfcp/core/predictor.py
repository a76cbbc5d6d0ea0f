"""A calibrated predictor that outlives the federation: thresholds per atom plus the group definition.

``Predictor.from_calibrator(cal).save(path)`` writes JSON; ``Predictor.load(path).predict(score_matrix, features)``
builds prediction sets for new inputs with no server or clients. For the regression-based methods (CondCP,
centralized GC-FCP, GC-FCP) the predictor also keeps the solved problem's coreset (means, exact integer weights,
atom keys), so a membership pattern first seen in deployment still gets its exact threshold.

Files are tamper-evident (docs/security.md): the content is sealed with the SHA-256 of its canonical JSON
(:func:`canonical_json`) and, when ``save`` / ``to_dict`` get a ``key``, an HMAC-SHA256 with that key; ``load``
checks both, then the schema, the value ranges, and that the method, groups, atom keys, thresholds and coreset
agree (the thresholds are recomputed from the coreset). Any mismatch raises :class:`PredictorIntegrityError`;
a file never loads as a predictor that builds different sets. Files of format ``flwr-gcfcp-predictor/1`` (no
integrity hash) are refused with a message saying so.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

import numpy as np

from .groups import GroupSpec, LabelSetGroups, keys_to_patterns, parse_groups, pattern_keys
from .solver import AtomSolver
from .validation import alpha_fraction, check_scores

__all__ = ["Predictor", "PredictorIntegrityError", "canonical_json", "seal", "unseal"]

FORMAT = "flwr-gcfcp-predictor/2"
_UNSEALED_FORMATS = ("flwr-gcfcp-predictor/1",)

#: method-name prefixes whose predictors must be marginal / group-conditional (a renamed kind is refused)
_MARGINAL_METHODS = ("split_cp", "fedcp")
_GROUP_METHODS = ("mondrian", "condcp", "centralized_gcfcp", "gcfcp")

_KEYS = ("format", "method", "kind", "private", "alpha", "score_lower_bound", "groups", "thresholds", "coreset")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,999}")


class PredictorIntegrityError(ValueError):
    """A saved predictor failed its integrity hash, its HMAC, or its schema / consistency checks."""


def integrity_error(where: str, message: str) -> PredictorIntegrityError:
    """The error for one entry of a saved predictor (``where`` names it)."""
    return PredictorIntegrityError(f"{where}: {message}")


def canonical_json(content: Mapping) -> bytes:
    """The bytes that are hashed: ``json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``.

    Non-finite floats must already be strings (``"inf"``); NaN / Infinity literals are refused.
    """
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.encode("ascii")


def _key_bytes(key: bytes | str) -> bytes:
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, (bytes, bytearray)) or len(key) == 0:
        raise ValueError(f"key must be non-empty bytes or str, got {type(key).__name__} of length {len(key or b'')}")
    return bytes(key)


def seal(content: Mapping, key: bytes | str | None = None) -> dict:
    """``content`` plus ``"integrity": {"sha256": ..., ["hmac_sha256": ...]}`` over :func:`canonical_json`."""
    if "integrity" in content:
        raise ValueError("content already has an 'integrity' entry")
    body = canonical_json(content)
    integrity = {"sha256": hashlib.sha256(body).hexdigest()}
    if key is not None:
        integrity["hmac_sha256"] = hmac.new(_key_bytes(key), body, hashlib.sha256).hexdigest()
    return {**content, "integrity": integrity}


def unseal(data: object, key: bytes | str | None = None, where: str = "predictor") -> dict:
    """Check the integrity entry of ``data`` (and its HMAC when ``key`` is given); return the content without it.

    Raises
    ------
    PredictorIntegrityError
        No or malformed integrity entry, SHA-256 mismatch, HMAC missing (with a key) or mismatched.
    """
    if not isinstance(data, Mapping):
        raise integrity_error(where, f"must be a JSON object, got {type(data).__name__}")
    integrity = data.get("integrity")
    if not isinstance(integrity, Mapping):
        raise integrity_error(
            where, "missing key 'integrity' (the SHA-256 of the content): the file was not written by "
            "Predictor.save / to_dict, or its seal was removed"
        )
    unknown = set(integrity) - {"sha256", "hmac_sha256"}
    if unknown:
        raise integrity_error(where, f"integrity has unknown entries {sorted(unknown)}")
    digest = integrity.get("sha256")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise integrity_error(where, f"integrity.sha256 must be 64 lowercase hex digits, got {str(digest)[:80]!r}")
    content = {k: v for k, v in data.items() if k != "integrity"}
    try:
        body = canonical_json(content)
    except ValueError as err:
        raise integrity_error(where, f"content is not canonical JSON ({err})") from None
    if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), digest):
        raise integrity_error(where, "SHA-256 mismatch: the content was modified after it was saved")
    if key is not None:
        mac = integrity.get("hmac_sha256")
        if mac is None:
            raise integrity_error(where, "a key was given but the file carries no HMAC (it was saved without key=)")
        if not isinstance(mac, str) or not _HEX64.fullmatch(mac):
            raise integrity_error(
                where, f"integrity.hmac_sha256 must be 64 lowercase hex digits, got {str(mac)[:80]!r}"
            )
        if not hmac.compare_digest(hmac.new(_key_bytes(key), body, hashlib.sha256).hexdigest(), mac):
            raise integrity_error(where, "HMAC mismatch: wrong key, or the content and its SHA-256 were both replaced")
    return content


def read_json(path: str | Path, where: str) -> object:
    """Parse a JSON file, refusing NaN / Infinity literals and duplicate keys."""

    def no_constant(name: str) -> object:
        raise integrity_error(where, f"JSON literal {name} is not allowed (non-finite numbers are written as strings)")

    def no_duplicates(pairs: list) -> dict:
        out: dict = {}
        for k, v in pairs:
            if k in out:
                raise integrity_error(where, f"duplicate JSON key {k!r}")
            out[k] = v
        return out

    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise integrity_error(where, f"not UTF-8 text ({err})") from None
    try:
        return json.loads(text, parse_constant=no_constant, object_pairs_hook=no_duplicates)
    except ValueError as err:  # JSONDecodeError, and integers past Python's digit limit
        raise integrity_error(where, f"not valid JSON ({err})") from None


def check_keys(data: Mapping, required: tuple[str, ...], where: str) -> None:
    """Exactly the keys ``required``: a missing key and an unknown key are both named."""
    missing = [k for k in required if k not in data]
    if missing:
        raise integrity_error(
            where, f"missing key {missing[0]!r}" + (f" (and {missing[1:]})" if len(missing) > 1 else "")
        )
    unknown = sorted(set(data) - set(required))
    if unknown:
        raise integrity_error(where, f"unknown key(s) {unknown}")


def threshold_value(v: object, where: str, lower: float | None, allow_unset: bool = False) -> float:
    """A saved threshold: a finite number or ``"inf"`` (full set); never NaN / -inf, never below ``lower``.

    ``allow_unset`` accepts ``"nan"`` (a set-valued rule without a threshold) and returns NaN.
    """
    if isinstance(v, str):
        if v == "inf":
            return math.inf
        if allow_unset and v == "nan":
            return math.nan
        raise integrity_error(where, f"must be a finite number or 'inf' (full set), got {v!r}")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise integrity_error(where, f"must be a number, got {type(v).__name__} {str(v)[:40]!r}")
    try:
        x = float(v)
    except OverflowError:
        raise integrity_error(where, "must be finite or the string 'inf', got an integer too large for a float") from None
    if not math.isfinite(x):
        raise integrity_error(where, f"must be finite or the string 'inf', got {v!r}")
    if lower is not None and x < lower:
        raise integrity_error(
            where, f"{x!r} is below the score lower bound {lower!r} (scores, hence thresholds, are >= it)"
        )
    return x


def alpha_text(v: object, where: str) -> Fraction:
    if not isinstance(v, str):
        raise integrity_error(where, f"must be an exact fraction string such as '1/10', got {v!r}")
    try:
        frac = Fraction(v)
    except (ValueError, ZeroDivisionError):
        raise integrity_error(where, f"must be an exact fraction string such as '1/10', got {v!r}") from None
    try:
        return alpha_fraction(frac, where)
    except ValueError as err:
        raise integrity_error(where, str(err)) from None


def _positive_int_text(v: object, where: str) -> int:
    if not isinstance(v, str) or not _DECIMAL.fullmatch(v) or v == "0":
        raise integrity_error(where, f"must be a positive integer written as a decimal string, got {str(v)[:40]!r}")
    return int(v)


def _method_kind(method: str) -> str | None:
    for kind, names in (("marginal", _MARGINAL_METHODS), ("group", _GROUP_METHODS)):
        if any(method == n or method.startswith(n + "_") for n in names):
            return kind
    return None


def _to_json_float(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


class SealedPredictor:
    """A predictor stored as sealed JSON: subclasses give ``content()`` and ``_from_content(content)``, and the class
    attributes naming their format, the formats refused as unsealed and the top-level keys."""

    FORMAT: str = ""
    UNSEALED_FORMATS: tuple[str, ...] = ()
    KEYS: tuple[str, ...] = ()
    KIND: str = "flwr-gcfcp predictor"

    def content(self) -> dict:
        raise NotImplementedError

    @classmethod
    def _from_content(cls, c: dict) -> "SealedPredictor":
        raise NotImplementedError

    def to_dict(self, key: bytes | str | None = None) -> dict:
        """JSON-able dict: :meth:`content` sealed with its SHA-256 and, with ``key``, an HMAC-SHA256."""
        return seal(self.content(), key)

    @classmethod
    def from_dict(cls, data: Mapping, key: bytes | str | None = None):
        """Rebuild after checking the format, the seal (and HMAC with ``key``), the schema, ranges and consistency.

        Raises
        ------
        PredictorIntegrityError
            On any mismatch (a ``ValueError``); the message names the entry.
        """
        if not isinstance(data, Mapping):
            raise integrity_error("predictor", f"must be a JSON object, got {type(data).__name__}")
        fmt = data.get("format")
        if fmt in cls.UNSEALED_FORMATS:
            raise integrity_error("predictor", f"format {fmt!r} carries no integrity hash and is no longer "
                                               f"loaded; re-export it from the calibrator (format {cls.FORMAT!r})")
        if fmt != cls.FORMAT:
            raise integrity_error("predictor", f"not a {cls.KIND} (format {fmt!r}, expected {cls.FORMAT!r})")
        check_keys(data, cls.KEYS + ("integrity",), "predictor")
        content = unseal(data, key)
        try:
            return cls._from_content(content)
        except OverflowError as err:  # an integer literal too large for a float anywhere in the content
            raise integrity_error("predictor", f"a number is out of range ({err})") from None

    @staticmethod
    def _read_common(c: Mapping) -> tuple[str, float | None]:
        """The entries every predictor has: the method name, ``private``, α and the score lower bound."""
        method = c["method"]
        if not isinstance(method, str) or not method:
            raise integrity_error("method", f"must be a non-empty string, got {method!r}")
        if not isinstance(c["private"], bool):
            raise integrity_error("private", f"must be true or false, got {c['private']!r}")
        alpha_text(c["alpha"], "alpha")
        lower = c["score_lower_bound"]
        if lower is not None and (isinstance(lower, bool) or not isinstance(lower, (int, float))
                                  or not math.isfinite(lower)):
            raise integrity_error("score_lower_bound", f"must be a finite number or null, got {lower!r}")
        return method, None if lower is None else float(lower)

    def save(self, path: str | Path, key: bytes | str | None = None) -> Path:
        """Write the sealed predictor as JSON (with an HMAC-SHA256 when ``key`` is given); return the path."""
        data = self.to_dict(key)
        type(self).from_dict(data, key)  # never write a file that would not load back
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path, key: bytes | str | None = None):
        """Load and verify a saved predictor (see :meth:`from_dict`); ``key`` also checks its HMAC."""
        return cls.from_dict(read_json(path, "predictor"), key)


class Predictor(SealedPredictor):
    """Per-atom thresholds of one calibrated method and the groups that map inputs to atoms.

    Parameters
    ----------
    method : str
        Calibrator name (e.g. ``gcfcp_delta250``).
    alpha : str
        Miscoverage level as an exact fraction string.
    thresholds : dict[int, float]
        Threshold per atom key (a single key 0 for marginal methods).
    groups : GroupSpec or None
        Group definition (None for marginal methods).
    private : bool
        Whether the calibration used only private summaries.
    coreset : dict or None
        ``{"values", "weights" (decimal strings), "keys", "test_weight", "alpha"}`` to solve unseen patterns.
    score_lower_bound : float or None
        Scores are known to be >= this (0 for the package's scores); a saved threshold below it is refused.
        None: no bound (signed scores).
    """

    FORMAT = FORMAT
    UNSEALED_FORMATS = _UNSEALED_FORMATS
    KEYS = _KEYS
    KIND = "flwr-gcfcp predictor"

    def __init__(self, method: str, alpha: str, thresholds: dict[int, float], groups: GroupSpec | None = None,
                 private: bool = True, coreset: dict | None = None, score_lower_bound: float | None = None) -> None:
        self.method = method
        self.alpha = alpha
        self.thresholds = {int(k): float(v) for k, v in thresholds.items()}
        self.groups = groups
        self.private = private
        self.coreset = coreset
        self.score_lower_bound = score_lower_bound
        self._solver: AtomSolver | None = None
        self.constant = groups is None

    # ------------------------------------------------------------------ construction and I/O
    @classmethod
    def from_calibrator(cls, calibrator) -> "Predictor":
        """Capture a fitted calibrator (see :mod:`flwr_gcfcp.methods`).

        ``score_lower_bound`` is 0 when every finite threshold and coreset value is >= 0 (the package's scores:
        LAC, APS, RAPS, absolute residual), else None.
        """
        coreset = None
        raw = getattr(calibrator, "_coreset", None)
        if raw is not None:
            values, weights, keys, test_weight = raw
            coreset = {
                "values": np.asarray(values, dtype=np.float64).tolist(),
                "weights": [str(int(w)) for w in weights],
                "keys": np.asarray(keys, dtype=np.int64).tolist(),
                "test_weight": str(int(test_weight)),
                "alpha": str(calibrator.alpha),
            }
        constant = calibrator._constant is not None
        thresholds = calibrator.thresholds
        seen = [float(v) for v in thresholds.values() if math.isfinite(v)] + (coreset["values"] if coreset else [])
        return cls(
            method=calibrator.name,
            alpha=str(getattr(calibrator, "nominal_alpha", calibrator.alpha)),
            thresholds=thresholds,
            groups=None if constant else calibrator.groups,
            private=bool(calibrator.private),
            coreset=coreset,
            score_lower_bound=0.0 if all(v >= 0 for v in seen) else None,
        )

    def content(self) -> dict:
        """The JSON content that is sealed (everything but the integrity entry)."""
        groups = None
        if self.groups is not None:
            groups = {"text": self.groups.to_text(), "n_labels": None}
            if isinstance(self.groups, LabelSetGroups):
                groups["n_labels"] = self.groups.n_labels
        return {
            "format": FORMAT,
            "method": self.method,
            "kind": "marginal" if self.constant else "group",
            "private": bool(self.private),
            "alpha": self.alpha,
            "score_lower_bound": self.score_lower_bound,
            "groups": groups,
            "thresholds": {str(k): _to_json_float(v) for k, v in sorted(self.thresholds.items())},
            "coreset": self.coreset,
        }


    @classmethod
    def _from_content(cls, c: dict) -> "Predictor":
        method, lower = cls._read_common(c)
        kind = c["kind"]
        if kind not in ("marginal", "group"):
            raise integrity_error("kind", f"must be 'marginal' or 'group', got {kind!r}")
        expected = _method_kind(method)
        if expected is not None and expected != kind:
            raise integrity_error("kind", f"method {method!r} is a {expected} method, but the file says {kind!r}")
        groups = cls._read_groups(c["groups"], kind)
        thresholds = cls._read_thresholds(c["thresholds"], groups, lower)
        coreset = cls._read_coreset(c["coreset"], groups, lower)
        pred = cls(method, c["alpha"], thresholds, groups, c["private"], coreset, lower)
        if coreset is not None:
            valid = cls._valid_keys(groups)
            if valid is not None and set(thresholds) != valid:  # a fit stores every pattern the groups can produce
                raise integrity_error(
                    "thresholds", f"atom keys {sorted(thresholds)} differ from the patterns the groups "
                    f"{groups.to_text()!r} produce ({sorted(valid)})"
                )
            pred._check_thresholds_against_coreset()
        return pred

    @staticmethod
    def _read_groups(g: object, kind: str) -> GroupSpec | None:
        if kind == "marginal":
            if g is not None:
                raise integrity_error("groups", "must be null for a marginal predictor (kind 'marginal')")
            return None
        if not isinstance(g, Mapping):
            raise integrity_error("groups", f"a group predictor (kind 'group') needs the group definition, got {g!r}")
        check_keys(g, ("text", "n_labels"), "groups")
        text, n_labels = g["text"], g["n_labels"]
        if not isinstance(text, str):
            raise integrity_error("groups.text", f"must be a string, got {text!r}")
        if n_labels is not None and (isinstance(n_labels, bool) or not isinstance(n_labels, int) or n_labels < 1):
            raise integrity_error("groups.n_labels", f"must be a positive integer or null, got {n_labels!r}")
        try:
            groups = parse_groups(text, n_labels=n_labels)
        except ValueError as err:
            raise integrity_error("groups.text", str(err)) from None
        if groups.to_text() != text or getattr(groups, "n_labels", None) != n_labels:
            raise integrity_error(
                "groups", f"{text!r} (n_labels {n_labels}) is not in the canonical form it was saved in "
                f"({groups.to_text()!r})"
            )
        return groups

    @staticmethod
    def _valid_keys(groups: GroupSpec) -> set[int] | None:
        patterns = groups.all_patterns()
        return None if patterns is None else set(pattern_keys(patterns).tolist())

    @classmethod
    def _read_key(cls, k: object, groups: GroupSpec | None, valid: set[int] | None, where: str) -> int:
        if isinstance(k, str):
            if not _DECIMAL.fullmatch(k):
                raise integrity_error(where, f"atom key must be a non-negative decimal integer, got {k!r}")
            key = int(k)
        elif isinstance(k, int) and not isinstance(k, bool):
            key = k
        else:
            raise integrity_error(where, f"atom key must be an integer, got {k!r}")
        if groups is None:
            if key != 0:
                raise integrity_error(where, f"a marginal predictor has the single atom key 0, got {key}")
        elif valid is not None:
            if key not in valid:
                raise integrity_error(
                    where, f"atom key {key} is not a membership pattern the groups {groups.to_text()!r} "
                    f"can produce (possible: {sorted(valid)})"
                )
        elif not 0 < key < (1 << groups.n_groups):
            raise integrity_error(where, f"atom key {key} is outside [1, 2^{groups.n_groups})")
        return key

    @classmethod
    def _read_thresholds(cls, t: object, groups: GroupSpec | None, lower: float | None) -> dict[int, float]:
        if not isinstance(t, Mapping) or not t:
            raise integrity_error(
                "thresholds", f"must be a non-empty object of atom key -> threshold, got {str(t)[:80]!r}"
            )
        valid = None if groups is None else cls._valid_keys(groups)
        out = {}
        for k, v in t.items():
            key = cls._read_key(k, groups, valid, f"thresholds[{k!r}]")
            out[key] = threshold_value(v, f"thresholds[{k!r}]", lower)
        return out

    @classmethod
    def _read_coreset(cls, cs: object, groups: GroupSpec | None, lower: float | None) -> dict | None:
        if cs is None:
            return None
        if groups is None:
            raise integrity_error("coreset", "a marginal predictor has no coreset (it must be null)")
        if not isinstance(cs, Mapping):
            raise integrity_error("coreset", f"must be an object or null, got {type(cs).__name__}")
        check_keys(cs, ("values", "weights", "keys", "test_weight", "alpha"), "coreset")
        values, weights, keys = cs["values"], cs["weights"], cs["keys"]
        for name, arr in (("values", values), ("weights", weights), ("keys", keys)):
            if not isinstance(arr, list) or not arr:
                raise integrity_error(f"coreset.{name}", "must be a non-empty list")
        if not len(values) == len(weights) == len(keys):
            raise integrity_error(
                "coreset", f"values, weights and keys differ in length: {len(values)}, {len(weights)}, "
                f"{len(keys)}"
            )
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise integrity_error(f"coreset.values[{i}]", f"must be a finite number, got {v!r}")
            if lower is not None and v < lower:
                raise integrity_error(f"coreset.values[{i}]", f"{v!r} is below the score lower bound {lower!r}")
        for i, w in enumerate(weights):
            _positive_int_text(w, f"coreset.weights[{i}]")
        valid = cls._valid_keys(groups)
        for i, k in enumerate(keys):
            if isinstance(k, str):
                raise integrity_error(f"coreset.keys[{i}]", f"must be an integer, got {k!r}")
            cls._read_key(k, groups, valid, f"coreset.keys[{i}]")
        _positive_int_text(cs["test_weight"], "coreset.test_weight")
        alpha_text(cs["alpha"], "coreset.alpha")
        return dict(cs)

    def _check_thresholds_against_coreset(self) -> None:
        """Every saved threshold equals, exactly, the one solved from the saved coreset."""
        solver = self._coreset_solver()
        for key, saved in self.thresholds.items():
            pattern = keys_to_patterns([key], self.groups.n_groups)[0]
            solved = solver.threshold(pattern)
            if solved != saved:
                raise integrity_error(f"thresholds[{str(key)!r}]",
                                      f"{saved!r} differs from {solved!r}, the threshold the saved coreset gives "
                                      "for this atom")

    # ------------------------------------------------------------------ files

    # ------------------------------------------------------------------ prediction
    def _coreset_solver(self) -> AtomSolver:
        if self._solver is None:
            keys = np.asarray(self.coreset["keys"], dtype=np.int64)
            uniq, index = np.unique(keys, return_inverse=True)
            weights = np.empty(len(self.coreset["weights"]), dtype=object)
            weights[:] = [int(w) for w in self.coreset["weights"]]
            self._solver = AtomSolver(
                self.coreset["values"], weights, index, keys_to_patterns(uniq, self.groups.n_groups),
                self.coreset["alpha"], int(self.coreset["test_weight"]),
            )
        return self._solver

    def _solve(self, key: int) -> float:
        if self.coreset is None:
            raise ValueError(
                f"{self.method}: atom key {key} was not seen in calibration and this predictor keeps no coreset "
                "to solve it"
            )
        return self._coreset_solver().threshold(keys_to_patterns([key], self.groups.n_groups)[0])

    def thresholds_for(self, features=None, n: int | None = None) -> np.ndarray:
        """Per-point thresholds.

        Parameters
        ----------
        features : array_like, optional
            What the group definition expects (e.g. predicted labels or probability rows); needed by group
            predictors, ignored by marginal ones.
        n : int, optional
            Number of points (marginal predictors without features; checked against features otherwise).
        """
        if self.constant:
            if n is None and features is None:
                raise ValueError(f"{self.method}: give n (the number of points) or features")
            count = n if n is not None else len(features)
            return np.full(int(count), self.thresholds[0])
        if features is None:
            raise ValueError(
                f"{self.method}: features are needed to place points in the groups {self.groups.to_text()!r}: "
                "predict(score_matrix, features)"
            )
        keys = self.groups.atom_keys(features)
        if n is not None and keys.size != n:
            raise ValueError(f"features describe {keys.size} points but score_matrix has {n} rows")
        out = np.empty(keys.size)
        for key in np.unique(keys).tolist():
            if key not in self.thresholds:
                self.thresholds[key] = self._solve(key)
            out[keys == key] = self.thresholds[key]
        return out

    def predict(self, score_matrix, features=None) -> np.ndarray:
        """Boolean (n, L) set mask ``score <= threshold(x)`` (``features`` only for group predictors)."""
        scores = check_scores(score_matrix, name="score_matrix", ndim=2)
        return scores <= self.thresholds_for(features, n=scores.shape[0])[:, None]
