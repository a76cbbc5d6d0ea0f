"""The :class:`Calibrator` base class shared by every method: client ``summarize`` -> server ``fit`` -> ``predict``.

π_k are the mixture weights (uniform by default), renormalised exactly over the clients whose summaries are used;
λ_k = π_k/(n_k + 1) become exact integers on a common scale.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from ..core.groups import GroupSpec, keys_to_patterns, pattern_keys
from ..core.quantiles import client_lambdas, integer_weights
from ..core.solver import AtomSolver
from ..core.summaries import RawSummary
from ..core.tdigest import TDigest
from ..core.validation import alpha_fraction, check_scores, exact_fraction

__all__ = ["Calibrator"]


def _pi_fractions(pi: Sequence[object] | None, n_clients: int) -> list[Fraction] | None:
    if pi is None:
        return None
    vals = [exact_fraction(p, f"pi[{i}]") for i, p in enumerate(pi)]
    if len(vals) != n_clients:
        raise ValueError(f"pi must have one entry per client ({n_clients}), got {len(vals)}")
    return vals


def _repeat_weights(weights: Sequence[int], counts: Sequence[int]) -> np.ndarray:
    """Per-point exact integer weights: int64 when the total fits, Python ints otherwise."""
    total = sum(int(w) * int(c) for w, c in zip(weights, counts))
    dtype = np.int64 if total < 2**62 else object
    return np.concatenate([np.full(int(c), int(w), dtype=dtype) for w, c in zip(weights, counts)])


def _client_integer_weights(ns: Sequence[int], pi: Sequence[object] | None) -> tuple[list[int], int]:
    """Exact integer λ_k on a common scale, and the test weight Σ_k λ_k on that scale."""
    if pi is None and ns and all(type(n) is int and n >= 0 for n in ns):
        # uniform π: λ_k = 1/(K (n_k + 1)), so the least common scale is lcm_k K (n_k + 1) (no fractions needed)
        dens = [len(ns) * (n + 1) for n in ns]
        scale = math.lcm(*dens)
        ints = [scale // d for d in dens]
        return ints, sum(ints)
    lams = client_lambdas(list(ns), _pi_fractions(pi, len(ns)))
    _, ints = integer_weights(lams)
    return ints, sum(ints)


def _union(digests: Sequence[TDigest]) -> TDigest:
    means = np.concatenate([d.means for d in digests])
    weights = np.concatenate([d.weights.astype(object) for d in digests])
    order = np.argsort(means, kind="stable")
    return TDigest(means=means[order], weights=weights[order], delta=min(d.delta for d in digests))


_PI_UPPER = Fraction(314159265358979324, 10**17)  # > π


class Calibrator:
    """Base class. Subclasses set ``summary_kind`` and implement ``summarize`` and ``_fit``."""

    name: str = "calibrator"
    private: bool = True
    summary_kind: str = ""
    summary_type: type = RawSummary
    #: extra client inputs ``summarize`` accepts as keywords (``labels``, ``probs``, ``rng``); see client_payload
    extra_inputs: tuple[str, ...] = ()

    def __init__(self, alpha: float, groups: GroupSpec | None = None) -> None:
        self.alpha = alpha_fraction(alpha)
        self.groups = groups
        self._constant: float | None = None
        self._by_key: dict[int, float] = {}
        self._solver: AtomSolver | None = None
        self._coreset: tuple | None = None
        self.fit_seconds: float | None = None
        self.n_clients_used: int | None = None

    # ------------------------------------------------------------------ client side
    def atom_keys(self, features: object, n: int) -> np.ndarray:
        if self.groups is None:
            return np.zeros(n, dtype=np.int64)
        keys = self.groups.atom_keys(features)
        if keys.size != n:
            raise ValueError(f"features describe {keys.size} points but there are {n} scores")
        return keys

    def summarize(self, scores, features=None, pi_k: float | None = None, n_clients: int | None = None):
        """Client side: turn local calibration scores into what the client sends."""
        raise NotImplementedError

    # ------------------------------------------------------------------ server side
    def fit(self, summaries: Sequence[object], pi: Sequence[object] | None = None) -> "Calibrator":
        """Server side: fit on the clients' summaries (π renormalised over them; uniform by default)."""
        summaries = list(summaries)
        if not summaries:
            raise ValueError("summaries is empty: at least one client summary is needed")
        if pi is not None and len(pi) != len(summaries):
            raise ValueError(f"pi must have one entry per summary ({len(summaries)}), got {len(pi)}")
        start = time.perf_counter()
        self._by_key, self._constant, self._solver, self._coreset = {}, None, None, None
        self._fit(summaries, pi)
        if self._solver is not None and self.groups is not None:
            patterns = self.groups.all_patterns()
            if patterns is not None:
                for key, pat in zip(pattern_keys(patterns).tolist(), patterns):
                    self._by_key[key] = self._solver.threshold(pat)
        self.fit_seconds = time.perf_counter() - start
        self.n_clients_used = len(summaries)
        return self

    def _fit(self, summaries: list, pi: Sequence[object] | None) -> None:
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if self._constant is None and not self._by_key and self._solver is None:
            raise RuntimeError(f"{self.name} is not fitted: call fit() first")

    # ------------------------------------------------------------------ prediction
    def threshold_for_keys(self, keys: np.ndarray) -> np.ndarray:
        """Per-point thresholds for atom keys (unseen atoms are solved lazily and cached)."""
        self._check_fitted()
        keys = np.asarray(keys, dtype=np.int64)
        if self._constant is not None:
            return np.full(keys.shape, self._constant)
        uniq, inverse = np.unique(keys, return_inverse=True)
        vals = np.empty(uniq.size)
        for i, key in enumerate(uniq.tolist()):
            if key not in self._by_key:
                if self._solver is None:
                    raise ValueError(f"{self.name}: no threshold for atom key {key} (a pattern not seen in calibration)")
                pattern = keys_to_patterns([key], self.groups.n_groups)[0]
                self._by_key[key] = self._solver.threshold(pattern)
            vals[i] = self._by_key[key]
        return vals[inverse]

    def thresholds_for(self, features: object, n: int | None = None) -> np.ndarray:
        """Per-point thresholds for the points described by ``features`` (``n`` points when there are no groups)."""
        if self.groups is None:
            if n is None and features is None:
                raise ValueError(f"{self.name}: give n (the number of points) or features")
            count = int(n if n is not None else len(features))
            return self.threshold_for_keys(np.zeros(count, dtype=np.int64))
        if features is None:
            raise ValueError(f"{self.name}: features are needed to place points in groups ({self.groups.to_text()!r})")
        thr = self.threshold_for_keys(self.groups.atom_keys(features))
        if n is not None and thr.shape[0] != n:
            raise ValueError(f"features describe {thr.shape[0]} points but score_matrix has {n} rows")
        return thr

    def predict(self, score_matrix: np.ndarray, features: object = None, probs: object = None) -> np.ndarray:
        """Boolean (n, L) prediction-set mask ``score <= threshold`` (``probs`` is used by set-valued methods only)."""
        scores = check_scores(score_matrix, name="score_matrix", ndim=2)
        thr = self.thresholds_for(features, n=scores.shape[0])
        return scores <= thr[:, None]

    @property
    def thresholds(self) -> dict[int, float]:
        """Threshold per atom key (``{0: t}`` for a single marginal threshold)."""
        self._check_fitted()
        return {0: self._constant} if self._constant is not None else dict(self._by_key)

    def predictor(self) -> dict:
        """JSON-serialisable calibrated predictor (see :class:`.predictor.Predictor`, which loads it back)."""
        from ..core.predictor import Predictor

        self._check_fitted()
        return Predictor.from_calibrator(self).to_dict()

    def _summary(self, arrays_or_obj):
        return arrays_or_obj
