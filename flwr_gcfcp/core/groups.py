"""Group definitions for group-conditional conformal prediction.

A group family ``G_1..G_d`` is described by a :class:`GroupSpec`.  Its :meth:`~GroupSpec.membership` maps the
features of ``n`` points to the ``(n, d)`` boolean matrix ``Phi``; the distinct rows of ``Phi`` are the *atoms*
(membership patterns).  Clients and server identify an atom by the integer key ``sum_g Phi_g 2^g``
(:func:`pattern_keys`), so they agree on atom ids without sharing an index (``d <= 62``).

Text forms (:func:`parse_groups`, :meth:`GroupSpec.to_text`)
-----------------------------------------------------------
Groups are separated by ``;``; whitespace is ignored.

``"0-3;2-5;4-7;6-9"`` or ``"labels:0,1,5;2-4"``
    Label sets, applied to the *predicted* label.  A set is a comma-separated list of labels ``k`` and
    inclusive ranges ``a-b`` (non-negative integers).
``"interval:0-2;1-3;2-4;3-5"``
    Closed intervals ``[lo, hi]`` of a scalar covariate.  An interval is written ``lo-hi`` or ``[lo,hi]``;
    numbers may be negative, decimal, in exponent notation or ``inf``.  ``lo-hi`` is unambiguous because a
    number contains ``-`` only as its first character or right after its exponent ``e``: the separator is the
    first other ``-``.  Examples: ``"interval:-1.5-0;0-2.5"``, ``"interval:-3--1"`` (= ``[-3, -1]``),
    ``"interval:[-1.5,0];[0,2.5]"``, ``"interval:-inf-0;0-inf"``.
``"confidence:4"`` or ``"confidence:4:0.5-1"``
    ``k`` overlapping groups of the model confidence ``max_c p_c(x)`` (GC-FCP App. E.2, Table 5), see
    :class:`ConfidenceGroups`; the optional range (``lo-hi`` or ``[lo,hi]``) defaults to ``[0.5, 1]``.
``"matrix:4"``
    The membership matrix is given directly (:class:`MatrixGroups`).

Label-set, interval and confidence forms take the optional suffixes ``+all`` (one more group: the whole space)
and ``+rest`` (one more group: the points in none of the listed groups), in either order.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

import numpy as np

from .validation import check_labels, check_probabilities, check_scores

__all__ = [
    "CallableGroups",
    "ConfidenceGroups",
    "GroupSpec",
    "IntervalGroups",
    "LabelSetGroups",
    "MatrixGroups",
    "keys_to_patterns",
    "parse_groups",
    "pattern_keys",
]

#: Largest number of groups whose membership patterns fit in an int64 key.
MAX_KEY_GROUPS = 62


def _show(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_membership_matrix(matrix: object, n_groups: int | None, name: str) -> np.ndarray:
    """Return ``matrix`` as an (n, d) bool array; accepts bool or numeric 0/1 entries."""
    arr = np.asarray(matrix)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-dimensional (n, d) membership matrix, got shape {arr.shape}")
    if n_groups is not None and arr.shape[1] != n_groups:
        raise ValueError(f"{name} must have d = {n_groups} columns (one per group), got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be boolean (or 0/1), got dtype {arr.dtype}")
    bad = (arr != 0) & (arr != 1)  # NaN compares unequal to both
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} must be boolean (or 0/1): {int(bad.sum())} other value(s), "
            f"first {arr[i, j].item()!r} at ({i}, {j})"
        )
    return arr.astype(bool)


def _unique_rows(patterns: np.ndarray) -> np.ndarray:
    """Distinct rows in order of first appearance."""
    if len(patterns) == 0:
        return patterns
    _, first = np.unique(patterns, axis=0, return_index=True)
    return patterns[np.sort(first)]


def _check_names(names: Sequence[str] | None, n_groups: int, default: list[str]) -> list[str]:
    if names is None:
        return default
    names = [str(s) for s in names]
    if len(names) != n_groups:
        raise ValueError(f"names must have {n_groups} entries (one per group), got {len(names)}: {_show(names)}")
    return names


def _check_n_groups(n_groups: object) -> int:
    if isinstance(n_groups, (bool, np.bool_)) or not isinstance(n_groups, (int, np.integer)) or int(n_groups) < 1:
        raise ValueError(f"n_groups must be a positive int, got {_show(n_groups)}")
    return int(n_groups)


class GroupSpec:
    """Base class of group families.

    Attributes
    ----------
    n_groups : int
        Number of groups ``d`` (including the optional whole-space and rest groups).
    names : list of str
        One display name per group.
    """

    n_groups: int
    names: list[str]

    def membership(self, features: object) -> np.ndarray:
        """Group membership of each point.

        Parameters
        ----------
        features : array_like
            What the family is defined on (see the subclass).

        Returns
        -------
        numpy.ndarray, shape (n, d), bool
            ``Phi[i, g]`` is True iff point ``i`` belongs to group ``g``.

        Raises
        ------
        ValueError
            If the features are malformed, or a point belongs to no group (conformal sets are undefined
            there; add a rest group, ``+rest``, to cover such points).
        """
        raise NotImplementedError

    def atom_keys(self, features: object) -> np.ndarray:
        """Atom key of each point: :func:`pattern_keys` of its :meth:`membership` row.

        Returns
        -------
        numpy.ndarray, shape (n,), int64
        """
        return pattern_keys(self.membership(features))

    def all_patterns(self) -> np.ndarray | None:
        """Every membership pattern a valid point can have, or None when they cannot be enumerated.

        Computed once per family by :meth:`_enumerate_patterns` (which subclasses override) and returned as a
        shared read-only array (a fit asks for it every time).

        Returns
        -------
        numpy.ndarray of shape (m, d), bool, or None
            Distinct non-empty patterns (possibly a superset of those reachable).
        """
        if "_all_patterns" not in self.__dict__:
            patterns = self._enumerate_patterns()
            if patterns is not None:
                patterns.setflags(write=False)
            self._all_patterns = patterns
        return self._all_patterns

    def _enumerate_patterns(self) -> np.ndarray | None:
        """Every reachable pattern (distinct, non-empty), or None; called once by :meth:`all_patterns`."""
        return None

    def to_text(self) -> str:
        """Text form; ``parse_groups(spec.to_text())`` rebuilds an equal spec (see :func:`parse_groups`)."""
        raise ValueError(f"{type(self).__name__} has no text form")

    @staticmethod
    def _require_covered(matrix: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """Raise if a row of ``matrix`` is empty (a point in no group)."""
        empty = ~matrix.any(axis=1)
        if empty.any():
            i = int(np.argmax(empty))
            shown = f" (feature value {values[i].item()!r})" if values is not None else ""
            raise ValueError(
                f"features: {int(empty.sum())} of {len(matrix)} point(s) belong to no group, first at index {i}"
                f"{shown}; cover them with a rest group ('+rest', add_rest=True) or the whole space ('+all')"
            )
        return matrix

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GroupSpec) or type(self) is not type(other):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def _identity(self) -> tuple:
        return (id(self),)

    def __repr__(self) -> str:
        try:
            return f"{type(self).__name__}({self.to_text()!r})"
        except ValueError:
            return f"{type(self).__name__}(n_groups={self.n_groups})"


class _ExtraGroups(GroupSpec):
    """Families built from listed groups plus the optional whole-space and rest groups (in that order)."""

    def __init__(self, base_names: list[str], add_whole_space: bool, add_rest: bool) -> None:
        for key, flag in (("add_whole_space", add_whole_space), ("add_rest", add_rest)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ValueError(f"{key} must be a bool, got {_show(flag)}")
        self.add_whole_space = bool(add_whole_space)
        self.add_rest = bool(add_rest)
        self.n_base = len(base_names)
        self.names = list(base_names) + ["all"] * self.add_whole_space + ["rest"] * self.add_rest
        self.n_groups = len(self.names)

    def _with_extras(self, base: np.ndarray) -> np.ndarray:
        cols = [base]
        if self.add_whole_space:
            cols.append(np.ones((len(base), 1), dtype=bool))
        if self.add_rest:
            cols.append(~base.any(axis=1, keepdims=True))
        return np.concatenate(cols, axis=1)

    def _suffix(self) -> str:
        return "+all" * self.add_whole_space + "+rest" * self.add_rest


# ----------------------------------------------------------------------------------------------- label sets


def _format_label_set(labels: Iterable[int]) -> str:
    """Compact text of a sorted label set: runs of consecutive labels become ``a-b``."""
    labels = sorted(labels)
    parts, start = [], 0
    for k in range(1, len(labels) + 1):
        if k == len(labels) or labels[k] != labels[k - 1] + 1:
            a, b = labels[start], labels[k - 1]
            parts.append(str(a) if a == b else f"{a}-{b}")
            start = k
    return ",".join(parts)


class LabelSetGroups(_ExtraGroups):
    """Groups defined by sets of *predicted* labels.

    Parameters
    ----------
    label_sets : sequence of iterables of int
        One non-empty set of labels per group, labels in ``[0, n_labels)``.  Sets may overlap.
    n_labels : int
        Number of classes ``L``.
    add_whole_space : bool, default False
        Add the whole space as one more group (named ``"all"``).  Group-conditional methods guarantee coverage
        for every function in the span of the group indicators; marginal coverage is guaranteed only if the
        constant function is in that span.  The paper's CIFAR-10 groups ``{0..3}, {2..5}, {4..7}, {6..9}`` do
        not span it (``c1 G1 + ... + c4 G4 = 1`` has no solution), so marginal coverage can fall below
        ``1 - alpha`` (0.890 measured with every group >= 0.90); adding the whole space restores it at a small
        cost in set size.
    add_rest : bool, default False
        Add an "everything else" group (named ``"rest"``) holding the points in none of the listed groups;
        without it such points raise in :meth:`membership`.

    Notes
    -----
    ``features`` for :meth:`membership` are predicted labels ``(n,)`` (int), or probabilities ``(n, L)`` from
    which the predicted label is the argmax (ties -> lowest label).
    """

    def __init__(
        self,
        label_sets: Sequence[Iterable[int]],
        n_labels: int,
        add_whole_space: bool = False,
        add_rest: bool = False,
    ) -> None:
        if isinstance(n_labels, (bool, np.bool_)) or not isinstance(n_labels, (int, np.integer)) or n_labels < 1:
            raise ValueError(f"n_labels must be a positive int, got {_show(n_labels)}")
        self.n_labels = int(n_labels)
        if isinstance(label_sets, (str, bytes)) or not isinstance(label_sets, Iterable):
            raise ValueError(f"label_sets must be a sequence of label sets, got {_show(label_sets)}")
        sets = []
        for g, raw in enumerate(label_sets):
            try:
                values = np.asarray(list(raw)).ravel()
            except TypeError:
                raise ValueError(f"label_sets[{g}] must be a set of integer labels, got {_show(raw)}") from None
            if values.size == 0:
                raise ValueError(f"label_sets[{g}] is empty: every group needs at least one label")
            integral = np.issubdtype(values.dtype, np.integer) or (
                np.issubdtype(values.dtype, np.floating)
                and np.all(np.isfinite(values))
                and np.all(values == np.round(values))
            )
            if not integral:
                raise ValueError(f"label_sets[{g}] must contain integer labels, got {_show(values.tolist())}")
            members = sorted({int(v) for v in values})
            bad = [v for v in members if not 0 <= v < self.n_labels]
            if bad:
                raise ValueError(f"label_sets[{g}] has labels outside [0, {self.n_labels}): {bad}")
            sets.append(tuple(members))
        if not sets:
            raise ValueError("label_sets is empty: at least one group is needed")
        self.label_sets = sets
        super().__init__([_format_label_set(s) for s in sets], add_whole_space, add_rest)
        base = np.zeros((self.n_labels, len(sets)), dtype=bool)
        for g, members in enumerate(sets):
            base[list(members), g] = True
        self._table = self._with_extras(base)  # (L, d): membership of each predicted label

    def _predicted(self, features: object) -> np.ndarray:
        arr = np.asarray(features)
        if arr.ndim == 2 and arr.shape[1] != 1:
            probs = check_probabilities(arr, name="features")
            if probs.shape[1] != self.n_labels:
                raise ValueError(f"features must have n_labels = {self.n_labels} columns, got shape {probs.shape}")
            return np.argmax(probs, axis=1)  # first maximum: ties -> lowest label
        return check_labels(arr, self.n_labels, name="features")

    def membership(self, features: object) -> np.ndarray:
        pred = self._predicted(features)
        return self._require_covered(self._table[pred], pred)

    def atom_keys(self, features: object) -> np.ndarray:
        if self.n_groups > MAX_KEY_GROUPS or type(self).membership is not LabelSetGroups.membership:
            return super().atom_keys(features)  # pattern_keys' error, or a subclass's own membership
        if "_label_keys" not in self.__dict__:
            self._label_keys = pattern_keys(self._table)  # one key per predicted label
        pred = self._predicted(features)
        keys = self._label_keys[pred]
        if keys.size and not keys.all():  # key 0: a label in no group
            self._require_covered(self._table[pred], pred)
        return keys

    def _enumerate_patterns(self) -> np.ndarray:
        """One pattern per predicted label (labels in no group skipped), duplicates removed, by first label."""
        covered = self._table[self._table.any(axis=1)]
        return _unique_rows(covered)

    def to_text(self) -> str:
        return ";".join(self.names[: self.n_base]) + self._suffix()

    def _identity(self) -> tuple:
        return (self.n_labels, self.to_text())


# ------------------------------------------------------------------------------------------------ intervals


def _format_number(x: float) -> str:
    """Shortest text that reads back to the same float (integers without a decimal point)."""
    if np.isfinite(x) and x == int(x) and abs(x) < 2**53:
        return str(int(x))
    return repr(float(x))


class IntervalGroups(_ExtraGroups):
    """Groups defined by closed intervals ``[lo, hi]`` of a scalar covariate.

    Parameters
    ----------
    intervals : sequence of (lo, hi)
        One interval per group, ``lo <= hi`` (``-inf`` / ``inf`` allowed); intervals may overlap.
    add_whole_space, add_rest : bool, default False
        As in :class:`LabelSetGroups`.

    Notes
    -----
    ``features`` for :meth:`membership` is the covariate, shape ``(n,)`` or ``(n, 1)``, finite.
    """

    def __init__(
        self,
        intervals: Sequence[tuple[float, float]],
        add_whole_space: bool = False,
        add_rest: bool = False,
    ) -> None:
        self._set_intervals(intervals, None)
        super().__init__(self._interval_names(), add_whole_space, add_rest)

    def _set_intervals(self, intervals: Sequence[tuple[float, float]], closed_right: Sequence[bool] | None) -> None:
        try:
            arr = np.asarray(intervals, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"intervals must be a sequence of (lo, hi) pairs, got {_show(intervals)}") from None
        if arr.size == 0:
            raise ValueError(f"intervals is empty: at least one group is needed, got {_show(intervals)}")
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError(f"intervals must be a sequence of (lo, hi) pairs, got {_show(intervals)}")
        if np.isnan(arr).any():
            raise ValueError(f"intervals must not contain NaN, got {_show(intervals)}")
        bad = arr[:, 0] > arr[:, 1]
        if bad.any():
            g = int(np.argmax(bad))
            raise ValueError(f"intervals[{g}] has lo > hi: ({float(arr[g, 0])!r}, {float(arr[g, 1])!r})")
        self.intervals = [(float(lo), float(hi)) for lo, hi in arr]
        self._lo, self._hi = arr[:, 0].copy(), arr[:, 1].copy()
        self._closed = np.ones(len(arr), dtype=bool) if closed_right is None else np.asarray(closed_right, bool)

    def _interval_names(self) -> list[str]:
        return [
            f"[{_format_number(lo)}, {_format_number(hi)}{']' if closed else ')'}"
            for (lo, hi), closed in zip(self.intervals, self._closed)
        ]

    def _values(self, features: object) -> np.ndarray:
        arr = check_scores(features, name="features", ndim=None)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise ValueError(f"features must be a scalar covariate of shape (n,) or (n, 1), got shape {arr.shape}")
        return arr

    def _patterns_at(self, values: np.ndarray) -> np.ndarray:
        v = values[:, None]
        below_hi = np.where(self._closed, v <= self._hi, v < self._hi)
        return self._with_extras((v >= self._lo) & below_hi)

    def membership(self, features: object) -> np.ndarray:
        values = self._values(features)
        return self._require_covered(self._patterns_at(values), values)

    def _enumerate_patterns(self) -> np.ndarray:
        """Patterns at every finite endpoint, just below and just above it (so between endpoints and outside)."""
        ends = np.unique(np.concatenate([self._lo, self._hi]))
        ends = ends[np.isfinite(ends)]
        if ends.size == 0:
            ends = np.zeros(1)
        points = np.unique(np.concatenate([ends, np.nextafter(ends, -np.inf), np.nextafter(ends, np.inf)]))
        patterns = self._patterns_at(points)
        return _unique_rows(patterns[patterns.any(axis=1)])

    def to_text(self) -> str:
        body = ";".join(f"{_format_number(lo)}-{_format_number(hi)}" for lo, hi in self.intervals)
        return "interval:" + body + self._suffix()

    def _identity(self) -> tuple:
        return (self.to_text(),)


class ConfidenceGroups(IntervalGroups):
    """Overlapping groups of the model confidence ``max_c p_c(x)`` (GC-FCP App. E.2, Table 5).

    With ``k + 1`` equally spaced breakpoints ``low = a_0 < a_1 < ... < a_k = high`` the groups are
    ``G_j = [a_{j-1}, a_{j+1})`` for ``j = 1..k-1`` and ``G_k = [a_{k-1}, a_k]`` (closed).  For ``k = 4`` on
    ``[0.5, 1]`` this is the paper's ``G1 = [a0, a2), G2 = [a1, a3), G3 = [a2, a4), G4 = [a3, a4]``; for
    ``k = 1`` the single group is ``[low, high]``.

    Parameters
    ----------
    k : int, default 4
        Number of confidence groups (>= 1).
    low, high : float, default 0.5, 1.0
        Range of the breakpoints (``low < high``, finite).  Points with confidence below ``low`` are in no group
        (they raise unless ``add_rest`` or ``add_whole_space``).
    add_whole_space, add_rest : bool, default False
        As in :class:`LabelSetGroups`.

    Notes
    -----
    ``features`` for :meth:`membership` are probabilities ``(n, L)`` (confidence = row maximum), or the
    confidences themselves as a 1-D array.
    """

    def __init__(
        self,
        k: int = 4,
        low: float = 0.5,
        high: float = 1.0,
        add_whole_space: bool = False,
        add_rest: bool = False,
    ) -> None:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {_show(k)}")
        for key, value in (("low", low), ("high", high)):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
                raise ValueError(f"{key} must be a finite number, got {_show(value)}")
            if not np.isfinite(float(value)):
                raise ValueError(f"{key} must be a finite number, got {_show(value)}")
        if not float(low) < float(high):
            raise ValueError(f"low must be < high, got low={low!r}, high={high!r}")
        self.k, self.low, self.high = int(k), float(low), float(high)
        self.breakpoints = np.linspace(self.low, self.high, self.k + 1)
        a = self.breakpoints
        intervals = [(a[j - 1], a[min(j + 1, self.k)]) for j in range(1, self.k + 1)]
        closed = [j == self.k for j in range(1, self.k + 1)]
        self._set_intervals(intervals, closed)
        _ExtraGroups.__init__(self, self._interval_names(), add_whole_space, add_rest)

    def _values(self, features: object) -> np.ndarray:
        arr = np.asarray(features)
        if arr.ndim == 2:
            return check_probabilities(arr, name="features").max(axis=1)
        return super()._values(arr)

    def to_text(self) -> str:
        rng = "" if (self.low, self.high) == (0.5, 1.0) else f":{_format_number(self.low)}-{_format_number(self.high)}"
        return f"confidence:{self.k}{rng}{self._suffix()}"


# ------------------------------------------------------------------------------------- matrices, callables


class MatrixGroups(GroupSpec):
    """Groups given directly by their membership matrix.

    Parameters
    ----------
    n_groups : int
        Number of groups ``d``.
    names : sequence of str, optional
        Group names (default ``"G1".."Gd"``); not part of the text form ``"matrix:d"``.

    Notes
    -----
    ``features`` for :meth:`membership` is the ``(n, d)`` membership matrix itself (bool or 0/1).
    """

    def __init__(self, n_groups: int, names: Sequence[str] | None = None) -> None:
        self.n_groups = _check_n_groups(n_groups)
        self.names = _check_names(names, self.n_groups, [f"G{g + 1}" for g in range(self.n_groups)])

    def membership(self, features: object) -> np.ndarray:
        return self._require_covered(_check_membership_matrix(features, self.n_groups, "features"))

    def to_text(self) -> str:
        return f"matrix:{self.n_groups}"

    def _identity(self) -> tuple:
        return (self.n_groups,)


class CallableGroups(GroupSpec):
    """Groups computed by a function ``fn(features) -> (n, d)`` bool membership matrix (no text form).

    Parameters
    ----------
    fn : callable
        Maps the features of ``n`` points to their ``(n, n_groups)`` membership (bool or 0/1).
    n_groups : int
        Number of groups ``d``.
    names : sequence of str, optional
        Group names (default ``"G1".."Gd"``).
    """

    def __init__(self, fn: Callable[[object], object], n_groups: int, names: Sequence[str] | None = None) -> None:
        if not callable(fn):
            raise ValueError(f"fn must be callable, got {_show(fn)}")
        self.fn = fn
        self.n_groups = _check_n_groups(n_groups)
        self.names = _check_names(names, self.n_groups, [f"G{g + 1}" for g in range(self.n_groups)])

    def membership(self, features: object) -> np.ndarray:
        matrix = _check_membership_matrix(self.fn(features), self.n_groups, "fn(features)")
        n = len(features) if hasattr(features, "__len__") else None
        if n is not None and len(matrix) != n:
            raise ValueError(f"fn(features) must have one row per point ({n}), got shape {matrix.shape}")
        return self._require_covered(matrix)

    def _identity(self) -> tuple:
        return (id(self),)


# ------------------------------------------------------------------------------------------------- parsing

_NUM = r"[+-]?(?:infinity|inf|(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)"
_INTERVAL_DASH = re.compile(rf"({_NUM})-({_NUM})", re.IGNORECASE)
_INTERVAL_BRACKET = re.compile(rf"\[({_NUM}),({_NUM})\]", re.IGNORECASE)
_LABEL_ITEM = re.compile(r"(\d+)(?:-(\d+))?")
_SUFFIX = re.compile(r"\+(all|rest)$", re.IGNORECASE)


def _parse_interval(item: str, text: str) -> tuple[float, float]:
    match = _INTERVAL_BRACKET.fullmatch(item) or _INTERVAL_DASH.fullmatch(item)
    if match is None:
        raise ValueError(f"text: cannot read interval {item!r} in {text!r}; write lo-hi or [lo,hi], e.g. -1.5-0")
    return float(match.group(1)), float(match.group(2))


def _parse_label_set(item: str, text: str) -> list[int]:
    labels: list[int] = []
    for part in item.split(","):
        match = _LABEL_ITEM.fullmatch(part)
        if match is None:
            raise ValueError(
                f"text: cannot read label set {item!r} in {text!r}; write labels and ranges like 0,1,5 or 2-4"
            )
        a = int(match.group(1))
        b = int(match.group(2)) if match.group(2) is not None else a
        if a > b:
            raise ValueError(f"text: label range {part!r} has start > end in {text!r}")
        labels.extend(range(a, b + 1))
    return labels


def _split_groups(body: str, text: str, what: str) -> list[str]:
    items = body.split(";")
    if body == "":
        raise ValueError(f"text: no groups in {text!r} (empty group list)")
    if any(item == "" for item in items):
        raise ValueError(f"text: empty {what} in {text!r} (check for doubled or trailing ';')")
    return items


def parse_groups(text: str, n_labels: int | None = None) -> GroupSpec:
    """Build a group family from its text form (grammar in the module docstring).

    Parameters
    ----------
    text : str
        E.g. ``"0-3;2-5;4-7;6-9"``, ``"0,1,5;2-4+rest"``, ``"interval:0-2;1-3;2-4;3-5"``,
        ``"interval:[-1.5,0];[0,2.5]+all"``, ``"confidence:4"``, ``"matrix:4"``.
    n_labels : int, optional
        Number of classes, for label sets.  If None it is taken as the largest listed label + 1; pass it
        whenever some labels appear in no group.  Ignored for the other forms.

    Returns
    -------
    GroupSpec
        ``parse_groups(spec.to_text(), n_labels=getattr(spec, "n_labels", None)) == spec``.

    Raises
    ------
    ValueError
        If the text cannot be parsed (the message shows it) or describes invalid groups.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {_show(text)}")
    body = re.sub(r"\s+", "", text)
    flags = {"all": False, "rest": False}
    while (match := _SUFFIX.search(body)) is not None:
        key = match.group(1).lower()
        if flags[key]:
            raise ValueError(f"text: suffix '+{key}' given twice in {text!r}")
        flags[key] = True
        body = body[: match.start()]
    kind, sep, rest = body.partition(":")
    kind = kind.lower() if sep else "labels"
    rest = rest if sep else body
    try:
        return _build(kind, rest, text, n_labels, flags)
    except ValueError as err:
        if str(err).startswith("text:"):
            raise
        raise ValueError(f"{err} (text {text!r})") from None


def _build(kind: str, rest: str, text: str, n_labels: int | None, flags: dict[str, bool]) -> GroupSpec:
    """Construct the spec of one parsed kind (helper of :func:`parse_groups`)."""
    extras = {"add_whole_space": flags["all"], "add_rest": flags["rest"]}

    if kind in ("interval", "intervals"):
        items = _split_groups(rest, text, "interval")
        return IntervalGroups([_parse_interval(item, text) for item in items], **extras)
    if kind == "confidence":
        count, _, span = rest.partition(":")
        if not count.isdigit():
            raise ValueError(f"text: confidence groups need a count, e.g. 'confidence:4', got {text!r}")
        low, high = _parse_interval(span, text) if span else (0.5, 1.0)
        return ConfidenceGroups(int(count), low, high, **extras)
    if kind == "matrix":
        if flags["all"] or flags["rest"]:
            raise ValueError(f"text: '+all' / '+rest' do not apply to matrix groups, got {text!r}")
        if not rest.isdigit():
            raise ValueError(f"text: matrix groups need a count, e.g. 'matrix:4', got {text!r}")
        return MatrixGroups(int(rest))
    if kind == "labels":
        sets = [_parse_label_set(item, text) for item in _split_groups(rest, text, "label set")]
        if n_labels is None:
            n_labels = max(max(s) for s in sets) + 1
        return LabelSetGroups(sets, n_labels, **extras)
    raise ValueError(
        f"text: unknown group kind {kind!r} in {text!r}; use label sets ('0-3;2-5'), 'interval:', "
        "'confidence:' or 'matrix:'"
    )


# ---------------------------------------------------------------------------------------------- atom keys


def pattern_keys(membership: np.ndarray) -> np.ndarray:
    """Integer key ``sum_g Phi_g 2^g`` of each membership row.

    Parameters
    ----------
    membership : array_like, shape (n, d), bool (or 0/1)
        Membership matrix with ``1 <= d <= 62``.

    Returns
    -------
    numpy.ndarray, shape (n,), int64
    """
    matrix = _check_membership_matrix(membership, None, "membership")
    d = matrix.shape[1]
    if not 1 <= d <= MAX_KEY_GROUPS:
        raise ValueError(f"membership must have 1 to {MAX_KEY_GROUPS} columns (groups) for int64 keys, got d = {d}")
    return (matrix.astype(np.int64) << np.arange(d, dtype=np.int64)).sum(axis=1, dtype=np.int64)


def unique_keys(keys: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(keys, return_inverse=True, return_counts=True)`` for int64 atom keys.

    Keys below 2**16 (families of up to 16 groups) are counted with ``bincount`` instead of sorted.

    Returns
    -------
    (uniq, inverse, counts)
        Sorted distinct keys, the row of ``uniq`` of each key, and how often each distinct key occurs.
    """
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if keys.size and 0 <= keys.min() and keys.max() < 2**16:
        tally = np.bincount(keys)
        uniq = np.flatnonzero(tally)
        lookup = np.zeros(tally.size, dtype=np.int64)
        lookup[uniq] = np.arange(uniq.size)
        return uniq, lookup[keys], tally[uniq]
    return np.unique(keys, return_inverse=True, return_counts=True)


def keys_to_patterns(keys: object, n_groups: int) -> np.ndarray:
    """Inverse of :func:`pattern_keys`.

    Parameters
    ----------
    keys : array_like of int, shape (m,)
        Keys in ``[0, 2^n_groups)``.
    n_groups : int
        Number of groups ``d`` (1 to 62).

    Returns
    -------
    numpy.ndarray, shape (m, d), bool
    """
    d = _check_n_groups(n_groups)
    if d > MAX_KEY_GROUPS:
        raise ValueError(f"n_groups must be at most {MAX_KEY_GROUPS} for int64 keys, got {d}")
    arr = np.asarray(keys)
    if arr.ndim != 1:
        raise ValueError(f"keys must be 1-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"keys must be integers, got dtype {arr.dtype} ({_show(arr[:5].tolist())})")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= (np.int64(1) << d))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"keys must lie in [0, 2^{d}) for n_groups={d}: {int(bad.sum())} out of range, "
            f"first {int(arr[i])} at index {i}"
        )
    return ((arr[:, None] >> np.arange(d, dtype=np.int64)) & 1).astype(bool)
