"""A calibrated predictor that outlives the federation: thresholds per atom plus the group definition.

``Predictor.from_calibrator(cal).save(path)`` writes JSON; ``Predictor.load(path).predict(score_matrix, features)``
builds prediction sets for new inputs with no server or clients. For the regression-based methods (CondCP,
centralized GC-FCP, GC-FCP) the predictor also keeps the solved problem's coreset (means, exact integer weights,
atom keys), so a membership pattern first seen in deployment still gets its exact threshold.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .groups import GroupSpec, LabelSetGroups, keys_to_patterns, parse_groups, pattern_keys
from .solver import AtomSolver
from .validation import check_scores

__all__ = ["Predictor"]

FORMAT = "flwr-gcfcp-predictor/1"


def _to_json_float(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _from_json_float(x: float | str) -> float:
    return float(x)


class Predictor:
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
    """

    def __init__(self, method: str, alpha: str, thresholds: dict[int, float], groups: GroupSpec | None = None,
                 private: bool = True, coreset: dict | None = None) -> None:
        self.method = method
        self.alpha = alpha
        self.thresholds = {int(k): float(v) for k, v in thresholds.items()}
        self.groups = groups
        self.private = private
        self.coreset = coreset
        self._solver: AtomSolver | None = None
        self.constant = groups is None

    # ------------------------------------------------------------------ construction and I/O
    @classmethod
    def from_calibrator(cls, calibrator) -> "Predictor":
        """Capture a fitted calibrator (see :mod:`.calibrators`)."""
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
        return cls(
            method=calibrator.name,
            alpha=str(getattr(calibrator, "nominal_alpha", calibrator.alpha)),
            thresholds=calibrator.thresholds,
            groups=None if constant else calibrator.groups,
            private=calibrator.private,
            coreset=coreset,
        )

    def to_dict(self) -> dict:
        groups = None
        if self.groups is not None:
            groups = {"text": self.groups.to_text()}
            if isinstance(self.groups, LabelSetGroups):
                groups["n_labels"] = self.groups.n_labels
        return {
            "format": FORMAT,
            "method": self.method,
            "private": self.private,
            "alpha": self.alpha,
            "groups": groups,
            "thresholds": {str(k): _to_json_float(v) for k, v in sorted(self.thresholds.items())},
            "coreset": self.coreset,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Predictor":
        if data.get("format") != FORMAT:
            raise ValueError(f"not a flwr-gcfcp predictor (format {data.get('format')!r}, expected {FORMAT!r})")
        g = data.get("groups")
        groups = None if g is None else parse_groups(g["text"], n_labels=g.get("n_labels"))
        thresholds = {int(k): _from_json_float(v) for k, v in data["thresholds"].items()}
        return cls(data["method"], data["alpha"], thresholds, groups, bool(data.get("private", True)), data.get("coreset"))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Predictor":
        return cls.from_dict(json.loads(Path(path).read_text()))

    # ------------------------------------------------------------------ prediction
    def _solve(self, key: int) -> float:
        if self.coreset is None:
            raise ValueError(
                f"{self.method}: atom key {key} was not seen in calibration and this predictor keeps no coreset "
                "to solve it"
            )
        if self._solver is None:
            keys = np.asarray(self.coreset["keys"], dtype=np.int64)
            uniq, index = np.unique(keys, return_inverse=True)
            weights = np.empty(len(self.coreset["weights"]), dtype=object)
            weights[:] = [int(w) for w in self.coreset["weights"]]
            self._solver = AtomSolver(
                self.coreset["values"], weights, index, keys_to_patterns(uniq, self.groups.n_groups),
                self.coreset["alpha"], int(self.coreset["test_weight"]),
            )
        return self._solver.threshold(keys_to_patterns([key], self.groups.n_groups)[0])

    def thresholds_for(self, features=None, n: int | None = None) -> np.ndarray:
        """Per-point thresholds (features as the group definition expects them; ignored for marginal methods)."""
        if self.constant:
            count = n if n is not None else len(features)
            return np.full(int(count), self.thresholds[0])
        keys = pattern_keys(self.groups.membership(features))
        out = np.empty(keys.size)
        for key in np.unique(keys).tolist():
            if key not in self.thresholds:
                self.thresholds[key] = self._solve(key)
            out[keys == key] = self.thresholds[key]
        return out

    def predict(self, score_matrix, features=None) -> np.ndarray:
        """Boolean (n, L) set mask ``score <= threshold(x)``."""
        scores = check_scores(score_matrix, name="score_matrix", ndim=2)
        return scores <= self.thresholds_for(features, n=scores.shape[0])[:, None]
