"""What a client sends in a calibration round, as flat numpy arrays, and the server-side validation.

* :class:`DigestSummary` — per-atom T-digests at one δ (GC-FCP), or one digest of all scores (FedCP). Clusters
  are sent as the paper writes them, ``(mean, weight)`` with ``weight = count · λ_k``, plus the integer counts and
  the client's λ_k; the server checks that weights, counts and λ_k agree, then recomputes λ_k = π_k / (n_k + 1) from
  its own (renormalised) π and works with the exact counts.
* :class:`RawSummary` — raw scores and atom keys. Not private: only the centralized baselines use it.
* :class:`QQSummary` — the few top order statistics FedCP-QQ needs.

``to_arrays``/``from_arrays`` use keys ``"<field>"``; the caller prefixes them with the summary kind.
``from_arrays`` raises :class:`PayloadError` naming what is wrong, so a malformed client can be excluded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .groups import pattern_keys
from .tdigest import build_digest

__all__ = ["DigestSummary", "PayloadError", "QQSummary", "RawSummary", "summarize_digests"]


class PayloadError(ValueError):
    """A client payload is malformed; the message says which field and why."""


def _get(arrays: Mapping[str, np.ndarray], key: str, kind: str, ndim: int) -> np.ndarray:
    if key not in arrays:
        raise PayloadError(f"missing field {key!r}")
    arr = np.asarray(arrays[key])
    if arr.ndim != ndim:
        raise PayloadError(f"field {key!r} must be {ndim}-dimensional, got shape {arr.shape}")
    if kind == "i" and arr.dtype.kind not in "iu":
        raise PayloadError(f"field {key!r} must hold integers, got dtype {arr.dtype}")
    if kind == "f":
        if arr.dtype.kind not in "fiu":
            raise PayloadError(f"field {key!r} must be numeric, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise PayloadError(f"field {key!r} holds NaN or inf values")
    return arr


def _scalar(arrays: Mapping[str, np.ndarray], key: str, kind: str) -> float | int:
    arr = _get(arrays, key, kind, 1)
    if arr.size != 1:
        raise PayloadError(f"field {key!r} must hold one value, got {arr.size}")
    return int(arr[0]) if kind == "i" else float(arr[0])


@dataclass
class DigestSummary:
    """One client's per-atom digests at one δ.

    Attributes
    ----------
    n : int
        Number of calibration points n_k on the client.
    lam : float
        λ_k = π_k / (n_k + 1) the client used for the paper's cluster weights.
    delta : float
        Compression parameter.
    atom_keys : (a,) int64
        Pattern keys of the atoms the client holds points of (atoms without points send nothing).
    offsets : (a + 1,) int64
        Clusters of atom i are ``means[offsets[i]:offsets[i + 1]]``.
    means, weights : (c,) float64
        Cluster means and paper weights ``count · λ_k``.
    counts : (c,) int64
        Points per cluster.
    """

    n: int
    lam: float
    delta: float
    atom_keys: np.ndarray
    offsets: np.ndarray
    means: np.ndarray
    weights: np.ndarray
    counts: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "n": np.array([self.n], dtype=np.int64),
            "lam": np.array([self.lam], dtype=np.float64),
            "delta": np.array([self.delta], dtype=np.float64),
            "atom_keys": self.atom_keys.astype(np.int64),
            "offsets": self.offsets.astype(np.int64),
            "means": self.means.astype(np.float64),
            "weights": self.weights.astype(np.float64),
            "counts": self.counts.astype(np.int64),
        }

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays a client sends (the paper's means and weights plus keys, offsets and counts)."""
        return int(sum(a.nbytes for a in self.to_arrays().values()))

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], max_key: int | None = None) -> "DigestSummary":
        """Validate and rebuild a summary; ``max_key`` bounds the atom keys (2**d for d groups)."""
        n = _scalar(arrays, "n", "i")
        lam = _scalar(arrays, "lam", "f")
        delta = _scalar(arrays, "delta", "f")
        keys = _get(arrays, "atom_keys", "i", 1)
        offsets = _get(arrays, "offsets", "i", 1)
        means = _get(arrays, "means", "f", 1)
        weights = _get(arrays, "weights", "f", 1)
        counts = _get(arrays, "counts", "i", 1)
        if n < 0:
            raise PayloadError(f"n must be >= 0, got {n}")
        if not lam > 0:
            raise PayloadError(f"lam must be > 0, got {lam}")
        if not delta > 0:
            raise PayloadError(f"delta must be > 0, got {delta}")
        if offsets.size != keys.size + 1 or (offsets.size and (offsets[0] != 0 or offsets[-1] != means.size)):
            raise PayloadError(f"offsets {offsets.tolist()[:8]} do not frame {means.size} clusters for {keys.size} atoms")
        if np.any(np.diff(offsets) <= 0):
            raise PayloadError("offsets must be strictly increasing (an atom with no clusters must not be sent)")
        if not (means.size == weights.size == counts.size):
            raise PayloadError(f"means, weights and counts differ in length: {means.size}, {weights.size}, {counts.size}")
        if np.unique(keys).size != keys.size:
            raise PayloadError("atom_keys contains duplicates")
        if keys.size and (keys.min() < 0 or (max_key is not None and keys.max() >= max_key)):
            raise PayloadError(f"unknown atom ids: keys must lie in [0, {max_key}), got {keys.min()}..{keys.max()}")
        if np.any(counts <= 0):
            raise PayloadError("counts must be positive")
        if np.any(weights <= 0):
            raise PayloadError("weights must be positive")
        if int(counts.sum()) != n:
            raise PayloadError(f"counts sum to {int(counts.sum())}, but n = {n}")
        if not np.allclose(weights, counts * lam, rtol=1e-9, atol=0):
            raise PayloadError("weights are not count · lam (inconsistent with π_k / (n_k + 1))")
        for i in range(keys.size):
            block = means[offsets[i] : offsets[i + 1]]
            if np.any(np.diff(block) < 0):
                raise PayloadError(f"means of atom {int(keys[i])} are not sorted")
        return cls(n=n, lam=lam, delta=delta, atom_keys=keys, offsets=offsets, means=means, weights=weights, counts=counts)

    def atom_blocks(self):
        """Yield ``(atom_key, means, counts)`` per atom."""
        for i, key in enumerate(self.atom_keys.tolist()):
            sl = slice(int(self.offsets[i]), int(self.offsets[i + 1]))
            yield key, self.means[sl], self.counts[sl]


def summarize_digests(scores: np.ndarray, atom_keys: np.ndarray, delta: float, lam: float) -> DigestSummary:
    """Client side of GC-FCP: one T-digest per atom the client holds points of (Algorithm 1, lines 2-4).

    Every point of a client has the same weight λ_k, so the clustering depends only on counts; the digest is built
    on unit integer weights (exact) and the paper's weights are ``count · λ_k``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    keys = np.asarray(atom_keys, dtype=np.int64)
    uniq = np.unique(keys)
    means, counts, offsets = [], [], [0]
    for key in uniq.tolist():
        digest = build_digest(scores[keys == key], None, delta)
        means.append(digest.means)
        counts.append(digest.weights.astype(np.int64))
        offsets.append(offsets[-1] + digest.n_clusters)
    m = np.concatenate(means) if means else np.zeros(0)
    c = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
    return DigestSummary(
        n=int(scores.size),
        lam=float(lam),
        delta=float(delta),
        atom_keys=uniq,
        offsets=np.asarray(offsets, dtype=np.int64),
        means=m,
        weights=c * float(lam),
        counts=c,
    )


@dataclass
class RawSummary:
    """Raw calibration scores and their atom keys (NOT private; centralized baselines only)."""

    scores: np.ndarray
    atom_keys: np.ndarray

    @property
    def n(self) -> int:
        return int(self.scores.size)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"scores": self.scores.astype(np.float64), "atom_keys": self.atom_keys.astype(np.int64)}

    @property
    def nbytes(self) -> int:
        return int(self.scores.nbytes + self.atom_keys.nbytes)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], max_key: int | None = None) -> "RawSummary":
        scores = _get(arrays, "scores", "f", 1)
        keys = _get(arrays, "atom_keys", "i", 1)
        if scores.size != keys.size:
            raise PayloadError(f"scores and atom_keys differ in length: {scores.size} vs {keys.size}")
        if keys.size and (keys.min() < 0 or (max_key is not None and keys.max() >= max_key)):
            raise PayloadError(f"unknown atom ids: keys must lie in [0, {max_key})")
        return cls(scores=scores, atom_keys=keys)


@dataclass
class QQSummary:
    """FedCP-QQ: the client's n_k and its largest order statistics (enough for the server's rank)."""

    n: int
    top: np.ndarray  # decreasing

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"n": np.array([self.n], dtype=np.int64), "top": self.top.astype(np.float64)}

    @property
    def nbytes(self) -> int:
        return int(8 + self.top.nbytes)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], max_key: int | None = None) -> "QQSummary":
        n = _scalar(arrays, "n", "i")
        top = _get(arrays, "top", "f", 1)
        if np.any(np.diff(top) > 0):
            raise PayloadError("top order statistics must be non-increasing")
        if top.size > n:
            raise PayloadError(f"{top.size} order statistics sent for n = {n} points")
        return cls(n=n, top=top)


def membership_keys(groups, features) -> np.ndarray:
    """Atom keys of the points described by ``features`` under ``groups``."""
    return pattern_keys(groups.membership(features))
