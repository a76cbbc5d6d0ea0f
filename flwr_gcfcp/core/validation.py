"""Input checks shared by the conformal core.

Every check fails early with a ``ValueError`` whose message names the parameter and shows the offending value,
so that a bad run configuration or a malformed client payload is reported where it enters the library.
"""

from __future__ import annotations

from fractions import Fraction
from numbers import Integral, Real

import numpy as np

__all__ = [
    "InsufficientDataWarning",
    "alpha_fraction",
    "check_alpha",
    "check_delta",
    "check_labels",
    "check_probabilities",
    "check_same_length",
    "check_scores",
    "exact_fraction",
]

#: Default tolerance on ``|sum(row) - 1|`` for probability rows (float32 softmax outputs stay well inside it).
PROBABILITY_ATOL = 1e-4


class InsufficientDataWarning(UserWarning):
    """Too few calibration points for a finite threshold: the threshold is ``+inf`` (the full set)."""


def _show(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def exact_fraction(value: object, name: str = "value") -> Fraction:
    """Read a number exactly, taking floats at their decimal representation (``0.1`` -> ``1/10``).

    Parameters
    ----------
    value : int, float, str, Fraction or numpy scalar
        The number to read.
    name : str
        Parameter name used in error messages.

    Returns
    -------
    Fraction
        The exact rational value.
    """
    if isinstance(value, Fraction):
        return value
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a number, got {_show(value)}")
    if isinstance(value, Integral):
        return Fraction(int(value))
    if isinstance(value, Real):
        as_float = float(value)
        if not np.isfinite(as_float):
            raise ValueError(f"{name} must be finite, got {_show(value)}")
        return Fraction(repr(as_float))
    if isinstance(value, str):
        try:
            return Fraction(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be a number, got {_show(value)}") from None
    raise ValueError(f"{name} must be a number, got {_show(value)}")


def alpha_fraction(alpha: object, name: str = "alpha") -> Fraction:
    """Return α as an exact fraction, validated to lie in (0, 1).

    Floats are read at their shortest decimal representation, so ``0.1`` is exactly ``1/10`` and integer
    ranks such as ``ceil((n + 1)(1 - α))`` are computed without floating-point error.
    """
    frac = exact_fraction(alpha, name)
    if not 0 < frac < 1:
        raise ValueError(f"{name} must be in (0, 1), got {_show(alpha)}")
    return frac


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """Validate a miscoverage level α in (0, 1) and return it as a float."""
    alpha_fraction(alpha, name)
    return float(alpha)


def check_delta(delta: float, name: str = "delta") -> float:
    """Validate a T-digest compression parameter δ (finite and > 0)."""
    if isinstance(delta, (bool, np.bool_)) or not isinstance(delta, (Real, np.number)):
        raise ValueError(f"{name} must be a positive number, got {_show(delta)}")
    value = float(delta)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {_show(delta)}")
    return value


def _first_bad(mask: np.ndarray) -> str:
    index = np.argwhere(mask)[0]
    return str(tuple(int(i) for i in index)) if index.size > 1 else str(int(index[0]))


def check_scores(scores: object, name: str = "scores", ndim: int | None = 1, allow_empty: bool = False) -> np.ndarray:
    """Return scores as a float64 array after checking shape, emptiness and finiteness.

    Parameters
    ----------
    scores : array_like
        Nonconformity scores.
    name : str
        Parameter name used in error messages.
    ndim : int or None
        Required number of dimensions (None accepts any).
    allow_empty : bool
        Accept an empty array (a client may hold no calibration points).
    """
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got {_show(scores)}") from None
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if arr.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: at least one calibration score is needed")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} must be finite: {int(bad.sum())} NaN/inf value(s), first at index {_first_bad(bad)} "
            f"({arr[tuple(np.argwhere(bad)[0])]})"
        )
    return arr


def check_probabilities(probs: object, name: str = "probs", atol: float = PROBABILITY_ATOL) -> np.ndarray:
    """Validate an (n, L) probability matrix: finite, within [0, 1], rows summing to 1 within ``atol``.

    Returns the matrix as float64 (not renormalised).
    """
    arr = check_scores(probs, name=name, ndim=2)
    if arr.shape[1] < 2:
        raise ValueError(f"{name} must have at least 2 columns (labels), got shape {arr.shape}")
    outside = (arr < 0) | (arr > 1)
    if outside.any():
        where = _first_bad(outside)
        raise ValueError(f"{name} must lie in [0, 1]: {int(outside.sum())} entries outside, first at {where}")
    sums = arr.sum(axis=1)
    off = np.abs(sums - 1.0) > atol
    if off.any():
        i = int(np.argmax(off))
        raise ValueError(
            f"{name} rows must sum to 1 (tolerance {atol:g}): {int(off.sum())} row(s) do not, "
            f"first is row {i} with sum {sums[i]!r}; pass logits through scores.softmax"
        )
    return arr


def check_labels(labels: object, n_classes: int, name: str = "labels") -> np.ndarray:
    """Validate integer labels in ``[0, n_classes)`` and return them as int64."""
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise ValueError(f"{name} must be integers, got dtype {arr.dtype} ({_show(arr[:5].tolist())})")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name} must lie in [0, {n_classes}): {int(bad.sum())} out of range, first {arr[i]} at index {i}")
    return arr


def check_same_length(**arrays: object) -> int:
    """Check that all given arrays have the same first dimension and return it."""
    lengths = {key: len(np.asarray(value)) for key, value in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{key}={n}" for key, n in lengths.items())
        raise ValueError(f"mismatched lengths: {shown}")
    return next(iter(lengths.values()), 0)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_bool(value: object, name: str) -> bool:
    """A boolean setting given as a bool, 0/1 or ``true/false/yes/no/on/off``; ``name`` appears in the error."""
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
    elif isinstance(value, (bool, int, np.integer)) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{name} must be true or false, got {value!r}")
