"""Nonconformity scores: softmax helper, LAC, APS, RAPS and the absolute residual.

Scores are *nonconformity* scores (larger = worse); a prediction set is ``{y : s(x, y) <= threshold}``.

Classification scores share one interface (:class:`ScoreFunction`):

``calibration_scores(probs, labels, rng)``
    the score of the true label of each calibration point, shape ``(n,)``;
``score_matrix(probs, rng)``
    the score of every candidate label of each test point, shape ``(n, L)``.

For the same probabilities and the same ``rng`` (an int seed, or two generators in the same state)
``score_matrix(probs, rng)[i, labels[i]] == calibration_scores(probs, labels, rng)[i]`` exactly: the
calibration scores are read off the score matrix, so both go through the same floating-point operations.

Ordering convention (APS / RAPS): labels are sorted by decreasing probability with a *stable* sort, so labels
with equal probability are ordered by increasing label index.  The rank ``o(y)`` is 1-based (1 = most likely).
The same rule is used at calibration and at prediction time.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np

from .validation import check_labels, check_probabilities, check_same_length, check_scores

__all__ = [
    "APSScore",
    "LACScore",
    "RAPSScore",
    "ScoreFunction",
    "absolute_residual",
    "make_score",
    "softmax",
]

def softmax(logits: object, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax over the last axis, with optional temperature scaling.

    Parameters
    ----------
    logits : array_like, shape (..., L)
        Finite logits (any number of leading dimensions; usually ``(n, L)``).
    temperature : float, default 1.0
        Temperature ``T > 0``; the result is ``softmax(logits / T)``.

    Returns
    -------
    numpy.ndarray
        Probabilities (float64) of the same shape, each row summing to 1.

    Raises
    ------
    ValueError
        If ``temperature`` is not a finite positive number, or ``logits`` is empty or not finite.
    """
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, (Real, np.number)):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    temp = float(temperature)
    if not np.isfinite(temp) or temp <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    z = check_scores(logits, name="logits", ndim=None)
    if z.ndim == 0:
        raise ValueError(f"logits must have at least one dimension (labels), got a scalar {float(z)!r}")
    z = z / temp
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _generator(rng: object, default: np.random.Generator) -> np.random.Generator:
    """Resolve ``rng``: None -> ``default``; int seed -> a fresh ``default_rng(seed)``; Generator -> itself."""
    if rng is None:
        return default
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (Integral, np.integer)) and not isinstance(rng, (bool, np.bool_)):
        if int(rng) < 0:
            raise ValueError(f"rng seed must be >= 0, got {rng!r}")
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be None, a non-negative int seed or a numpy Generator, got {rng!r}")


class ScoreFunction:
    """Base class of classification nonconformity scores.

    Subclasses implement :meth:`score_matrix`; :meth:`calibration_scores` reads the true-label column off it,
    which makes the two consistent by construction.

    Attributes
    ----------
    name : str
        Short name accepted by :func:`make_score`.
    """

    name: str = "base"

    def score_matrix(self, probs: object, rng: object = None) -> np.ndarray:
        """Scores of every label for every point.

        Parameters
        ----------
        probs : array_like, shape (n, L)
            Predicted class probabilities (rows sum to 1).
        rng : None, int or numpy.random.Generator, optional
            Randomness for randomized scores (ignored by deterministic ones).

        Returns
        -------
        numpy.ndarray, shape (n, L)
            ``s(x_i, y)`` for every point ``i`` and label ``y``.
        """
        raise NotImplementedError

    def calibration_scores(self, probs: object, labels: object, rng: object = None) -> np.ndarray:
        """Scores of the true labels.

        Parameters
        ----------
        probs : array_like, shape (n, L)
            Predicted class probabilities (rows sum to 1).
        labels : array_like of int, shape (n,)
            True labels in ``[0, L)``.
        rng : None, int or numpy.random.Generator, optional
            Randomness for randomized scores; the same value as for :meth:`score_matrix` gives the same
            per-point draws.

        Returns
        -------
        numpy.ndarray, shape (n,)
            ``s(x_i, labels[i])``.
        """
        p = check_probabilities(probs, name="probs")
        y = check_labels(labels, p.shape[1], name="labels")
        check_same_length(probs=p, labels=y)
        return self.score_matrix(p, rng=rng)[np.arange(len(y)), y]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LACScore(ScoreFunction):
    """LAC / "softmax" score ``s(x, y) = 1 - p_y(x)`` (deterministic; ``rng`` is ignored)."""

    name = "lac"

    def score_matrix(self, probs: object, rng: object = None) -> np.ndarray:
        p = check_probabilities(probs, name="probs")
        return 1.0 - p


class APSScore(ScoreFunction):
    """Adaptive prediction sets (APS) score.

    ``s(x, y) = sum_{r < o(y)} p_(r)(x) + U * p_y(x)``, where ``p_(1) >= p_(2) >= ...`` are the sorted
    probabilities (stable sort: ties ordered by label index) and ``o(y)`` is the 1-based rank of ``y``.

    Parameters
    ----------
    randomized : bool, default True
        If True, ``U ~ Unif[0, 1)`` is drawn once per point (shared by all labels of that point).
        If False, ``U = 1``: the score is the total mass of the labels ranked at or above ``y`` (``p_y``
        included), the convention of most libraries (Romano et al. 2020 non-randomized sets, TorchCP, MAPIE).
        Ding et al. use ``U = 0`` instead; that is not offered here.
    seed : int, default 0
        Seed of the generator used when a method is called with ``rng=None``.  The generator persists across
        calls, so successive calls (e.g. calibration, then test) get independent draws that are still
        reproducible from run to run.  Pass ``rng`` (an int or a Generator) to control a single call.

    Notes
    -----
    Use different randomness for calibration and test points: equal seeds reproduce the same ``U`` sequence.
    """

    name = "aps"

    def __init__(self, randomized: bool = True, seed: int = 0) -> None:
        if not isinstance(randomized, (bool, np.bool_)):
            raise ValueError(f"randomized must be a bool, got {randomized!r}")
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (Integral, np.integer)) or int(seed) < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.randomized = bool(randomized)
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)

    def _penalty(self, ranks: np.ndarray) -> np.ndarray | float:
        """Extra score as a function of the 1-based rank (0 for APS)."""
        return 0.0

    def score_matrix(self, probs: object, rng: object = None) -> np.ndarray:
        p = check_probabilities(probs, name="probs")
        n, n_labels = p.shape
        if self.randomized:
            u = _generator(rng, self._rng).random(n)[:, None]
        else:
            if rng is not None:
                _generator(rng, self._rng)  # validate rng even though U = 1 does not use it
            u = np.ones((n, 1))
        order = np.argsort(-p, axis=1, kind="stable")  # descending; ties by label index
        p_sorted = np.take_along_axis(p, order, axis=1)
        mass_above = np.zeros_like(p_sorted)
        np.cumsum(p_sorted[:, :-1], axis=1, out=mass_above[:, 1:])
        ranks = np.arange(1, n_labels + 1, dtype=np.float64)[None, :]
        sorted_scores = mass_above + u * p_sorted + self._penalty(ranks)
        scores = np.empty_like(sorted_scores)
        np.put_along_axis(scores, order, sorted_scores, axis=1)
        return scores

    def __repr__(self) -> str:
        return f"{type(self).__name__}(randomized={self.randomized}, seed={self.seed})"


class RAPSScore(APSScore):
    """Regularized APS (RAPS): ``APS(x, y) + max(0, lam * (o(y) - k_reg))``.

    Parameters
    ----------
    lam : float, default 0.01
        Penalty per rank beyond ``k_reg`` (finite, >= 0).  Paper value 0.01.
    k_reg : int, default 5
        Number of top ranks without penalty (>= 0).  Paper value 5.
    randomized, seed
        As in :class:`APSScore`.
    """

    name = "raps"

    def __init__(self, lam: float = 0.01, k_reg: int = 5, randomized: bool = True, seed: int = 0) -> None:
        super().__init__(randomized=randomized, seed=seed)
        if isinstance(lam, (bool, np.bool_)) or not isinstance(lam, (Real, np.number)):
            raise ValueError(f"lam must be a number >= 0, got {lam!r}")
        if not np.isfinite(float(lam)) or float(lam) < 0:
            raise ValueError(f"lam must be finite and >= 0, got {lam!r}")
        if isinstance(k_reg, (bool, np.bool_)) or not isinstance(k_reg, (Integral, np.integer)) or int(k_reg) < 0:
            raise ValueError(f"k_reg must be a non-negative int, got {k_reg!r}")
        self.lam = float(lam)
        self.k_reg = int(k_reg)

    def _penalty(self, ranks: np.ndarray) -> np.ndarray:
        return np.maximum(0.0, self.lam * (ranks - self.k_reg))

    def __repr__(self) -> str:
        return (
            f"RAPSScore(lam={self.lam}, k_reg={self.k_reg}, randomized={self.randomized}, seed={self.seed})"
        )


_SCORES = {"softmax": LACScore, "lac": LACScore, "aps": APSScore, "raps": RAPSScore}


def make_score(name: str, **kwargs: object) -> ScoreFunction:
    """Create a classification score by name.

    Parameters
    ----------
    name : {"softmax", "lac", "aps", "raps"}
        Case-insensitive; "softmax" and "lac" are the same score ``1 - p_y``.
    **kwargs
        Passed to the class (``randomized``, ``seed`` for APS; also ``lam``, ``k_reg`` for RAPS).

    Returns
    -------
    ScoreFunction

    Raises
    ------
    ValueError
        For an unknown name, or keyword arguments the score does not take.
    """
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in _SCORES:
        raise ValueError(f"name must be one of {sorted(_SCORES)}, got {name!r}")
    try:
        return _SCORES[key](**kwargs)
    except TypeError as err:
        raise ValueError(f"invalid keyword arguments {sorted(kwargs)} for score {name!r}: {err}") from None


def absolute_residual(y: object, y_pred: object) -> np.ndarray:
    """Regression score ``|y - f(x)|``.

    Parameters
    ----------
    y : array_like, shape (n,)
        Observed responses (finite).
    y_pred : array_like, shape (n,)
        Model predictions (finite).

    Returns
    -------
    numpy.ndarray, shape (n,)
        Absolute residuals (float64).
    """
    y_arr = check_scores(y, name="y", ndim=1)
    pred = check_scores(y_pred, name="y_pred", ndim=1)
    check_same_length(y=y_arr, y_pred=pred)
    return np.abs(y_arr - pred)
