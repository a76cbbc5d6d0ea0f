"""What a client sends in a calibration round, its compact exact encoding, and the server-side validation.

* :class:`DigestSummary` — per-atom T-digests at one δ (GC-FCP), or one digest of all scores (FedCP).
* :class:`RawSummary` — raw scores and atom keys. Not private: only the centralized baselines use it.
* :class:`QQSummary` — the few top order statistics FedCP-QQ needs.
* :func:`encode_digest_blocks` / :func:`decode_digest_blocks` — the digest encoding, shared with the
  class-conditional and set-valued payloads (``methods.adapters``).
* :class:`PayloadLimits` — the bounds the server enforces on every client message.

Encoding (``docs/wire_format.md`` lists every array): clusters are sent as integer counts (never float weights:
the server derives λ_k from its own π and the client's n_k), the counts of an atom as ``count - 1`` packed at the
smallest bit width that holds them (width 0, i.e. nothing, when every cluster of the atom is a single point:
singletons travel as their values alone), the atom structure as small unsigned integers, and the cluster means
bit-exactly as an Elias-Fano code of their order-preserving 64-bit keys (:mod:`.encoding`).

``to_arrays``/``from_arrays`` use keys ``"<field>"``; the caller prefixes them with the summary kind.
``from_arrays`` raises :class:`PayloadError` naming what is wrong, so a malformed client can be excluded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .encoding import (
    EncodingError,
    as_small_uint,
    decode_sorted_floats,
    encode_sorted_floats,
    pack_uints,
    split_uints,
    unpack_bits,
)
from .groups import GroupSpec, pattern_keys
from .tdigest import compress_sorted_segments, first_structure_violation
from .validation import check_scores

__all__ = [
    "DEFAULT_LIMITS",
    "DigestSummary",
    "PayloadError",
    "PayloadLimits",
    "QQSummary",
    "RawSummary",
    "allowed_atom_keys",
    "decode_digest_blocks",
    "encode_digest_blocks",
    "summarize_digests",
]


class PayloadError(ValueError):
    """A client payload is malformed; the message says which field and why."""


@dataclass(frozen=True)
class PayloadLimits:
    """Bounds the server enforces on every client's calibration message (defaults in brackets).

    Attributes
    ----------
    min_points : int or None
        Fewest calibration points n_k a client may report [None: ``ceil((1 - α)/α)`` for the smallest nominal α
        of the methods being fitted, 9 for α = 0.1]. With every ``n_k + 1 >= 1/α``, ``Σ_k π_k/(n_k + 1) <= α``,
        so no client can make the FedCP threshold +inf by reporting n_k = 0, 1 or 3. Clients below are excluded.
    max_points : int
        Most calibration points a client may report [10**9].
    max_client_values : int
        Most values (clusters, raw scores, order statistics) in one client's payload, all blocks together [10**6].
    max_client_bytes : int
        Most bytes (the arrays' ``nbytes``) in one client's payload [64 MiB].
    max_fit_values : int
        Most values one method may fit on, summed over the clients used [4·10**6]: above it the method fails
        with that reason (the server's time and memory are linear in it).
    """

    min_points: int | None = None
    max_points: int = 10**9
    max_client_values: int = 10**6
    max_client_bytes: int = 64 * 2**20
    max_fit_values: int = 4 * 10**6

    def __post_init__(self) -> None:
        for name in ("max_points", "max_client_values", "max_client_bytes", "max_fit_values"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"PayloadLimits.{name} must be an integer >= 1, got {value!r}")
        mp = self.min_points
        if mp is not None and (isinstance(mp, bool) or not isinstance(mp, (int, np.integer)) or not 0 <= mp <= self.max_points):
            raise ValueError(f"PayloadLimits.min_points must be None or an integer in [0, max_points], got {mp!r}")
        if self.max_points * self.max_client_values >= 2**62:
            raise ValueError("PayloadLimits: max_points * max_client_values must stay below 2**62 (exact int64 sums)")

    def points_floor(self, alpha: Fraction | float) -> int:
        """The minimum n_k in force: ``min_points``, or ``ceil((1 - α)/α)`` when it is None."""
        if self.min_points is not None:
            return int(self.min_points)
        a = Fraction(alpha)
        return math.ceil((1 - a) / a)


DEFAULT_LIMITS = PayloadLimits()


def allowed_atom_keys(groups: GroupSpec | None) -> np.ndarray | int:
    """Atom keys a payload may hold: the sorted keys of ``groups.all_patterns()``, ``[0]`` without groups, or
    the bound ``2**d`` when the family cannot enumerate its patterns."""
    if groups is None:
        return np.zeros(1, dtype=np.int64)
    patterns = groups.all_patterns()
    if patterns is None:
        return 2**groups.n_groups
    return np.unique(pattern_keys(patterns))


def _check_keys(keys: np.ndarray, allowed: np.ndarray | int | None, field: str) -> None:
    if not keys.size:
        return
    if int(keys.min()) < 0:
        raise PayloadError(f"unknown atom ids in {field!r}: keys must be >= 0, got {int(keys.min())}")
    if allowed is None:
        return
    if isinstance(allowed, (int, np.integer)):
        bad = keys[keys >= allowed]
        if bad.size:
            raise PayloadError(f"unknown atom ids in {field!r}: keys must lie in [0, {allowed}), got {int(bad[0])}")
        return
    bad = keys[~np.isin(keys, allowed)]
    if bad.size:
        raise PayloadError(
            f"unknown atom ids in {field!r}: {bad[:5].tolist()} are not membership patterns the groups can produce"
        )


def _field(arrays: Mapping[str, np.ndarray], key: str, ndim: int, kinds: str) -> np.ndarray:
    if key not in arrays:
        raise PayloadError(f"missing field {key!r}")
    arr = np.asarray(arrays[key])
    if not arr.dtype.isnative:
        raise PayloadError(f"field {key!r} must be in native byte order, got dtype {arr.dtype.str}")
    if arr.ndim != ndim:
        raise PayloadError(f"field {key!r} must be {ndim}-dimensional, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in kinds:
        want = {"iu": "integers", "u": "unsigned integers", "f": "float64 values"}.get(kinds, kinds)
        raise PayloadError(f"field {key!r} must hold {want}, got dtype {arr.dtype}")
    if kinds == "iu" and arr.size and int(arr.min()) < 0:
        raise PayloadError(f"field {key!r} must hold integers >= 0, got {int(arr.min())}")
    return arr


def _uints(arrays: Mapping[str, np.ndarray], key: str, size: int | None = None) -> list[int]:
    arr = _field(arrays, key, 1, "iu")
    if size is not None and arr.size != size:
        raise PayloadError(f"field {key!r} must hold {size} integers, got {arr.size}")
    return [int(x) for x in arr.tolist()]


def _floats(arrays: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    arr = _field(arrays, key, 1, "f")
    if arr.dtype != np.float64:
        raise PayloadError(f"field {key!r} must be float64, got {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise PayloadError(f"field {key!r} holds NaN or inf values")
    return arr


def _check_points(n: int, limits: PayloadLimits, field: str = "n") -> None:
    if n > limits.max_points:
        raise PayloadError(f"{field} = {n} calibration points exceeds PayloadLimits.max_points = {limits.max_points}")


def _check_values(count: int, limits: PayloadLimits, what: str) -> None:
    if count > limits.max_client_values:
        raise PayloadError(f"{count} {what} exceed PayloadLimits.max_client_values = {limits.max_client_values}")


# ------------------------------------------------------------------------------------------------ digest blocks
def _float_bytes(values: np.ndarray) -> np.ndarray:
    return np.frombuffer(np.asarray(values, dtype="<f8").tobytes(), dtype=np.uint8)


def _split_data(data: np.ndarray, sizes: Sequence[int], field: str) -> list[np.ndarray]:
    """Cut ``data`` into sections of the given byte sizes plus the rest (the unary section, checked later)."""
    if data.dtype != np.uint8:
        raise PayloadError(f"field {field!r} must be uint8 bytes, got dtype {data.dtype}")
    if data.size < sum(sizes):
        raise PayloadError(f"field {field!r} holds {data.size} bytes, fewer than the {sum(sizes)} its header implies")
    bounds = np.cumsum([0, *sizes])
    return [data[bounds[i] : bounds[i + 1]] for i in range(len(sizes))] + [data[bounds[-1] :]]


def _first_values(section: np.ndarray, field: str) -> np.ndarray:
    values = np.frombuffer(section.tobytes(), dtype="<f8").astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise PayloadError(f"field {field!r} holds NaN or inf values")
    return values


def encode_digest_blocks(keys: Sequence[int], means: Sequence[np.ndarray], counts: Sequence[np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    """Encode per-atom digests (non-empty, unit-weight integer counts) as two arrays (after ``prefix``).

    ``atoms`` (5, a) small uint — rows: key, points n_a, clusters m_a, mean code width l_a, count width w_a.
    ``data`` uint8 — four byte-aligned sections: each atom's first mean (float64, little-endian, 8a bytes); the
    counts as ``count - 1`` in ``w_a`` bits per cluster (``w_a = 0`` when every cluster of the atom is one point);
    the low and then the unary high parts of the Elias-Fano code of the later means
    (:func:`~flwr_gcfcp.core.encoding.encode_sorted_floats`).
    """
    cs = [np.asarray(c, dtype=np.int64) for c in counts]
    widths = [int(c.max() - 1).bit_length() for c in cs]
    first, mean_widths, low, high = encode_sorted_floats([np.asarray(m, dtype=np.float64) for m in means])
    atoms = np.array(
        [list(keys), [int(c.sum()) for c in cs], [c.size for c in cs], mean_widths.tolist(), widths], dtype=np.int64
    ).reshape(5, len(cs))
    parts = [np.unpackbits(pack_uints(c - 1, w))[: c.size * w] for c, w in zip(cs, widths) if w]
    bits = np.packbits(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint8)  # atoms' bits back to back
    return {f"{prefix}atoms": as_small_uint(atoms), f"{prefix}data": np.concatenate([_float_bytes(first), bits, low, high])}


def decode_digest_blocks(
    arrays: Mapping[str, np.ndarray],
    delta: float,
    allowed_keys: np.ndarray | int | None,
    limits: PayloadLimits = DEFAULT_LIMITS,
    prefix: str = "",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate and decode :func:`encode_digest_blocks` arrays.

    Checks, in this order (cheap bounds before anything is unpacked): shapes and dtypes; keys strictly increasing
    and among ``allowed_keys``; per atom ``1 <= clusters <= min(points, floor(δ) + 2)``; total clusters within
    ``limits.max_client_values``; counts in ``[1, points]`` summing exactly to the atom's points; the cluster
    sizes form the δ-digest the construction gives (:func:`~flwr_gcfcp.core.tdigest.check_unit_structure`);
    the means decode to finite non-decreasing float64 values.

    Returns
    -------
    keys, points, offsets, means, counts
        int64 keys and points per atom, int64 offsets (a + 1,), float64 means, int64 counts.
    """
    name = prefix or "digest"
    atoms = _field(arrays, f"{prefix}atoms", 2, "iu")
    if atoms.shape[0] != 5:
        raise PayloadError(f"field '{prefix}atoms' must have 5 rows (key, points, clusters, widths), got shape {atoms.shape}")
    a = atoms.shape[1]
    _check_values(a, limits, f"atoms in {name!r}")
    if a and int(atoms.max()) >= 2**63:
        raise PayloadError(f"field '{prefix}atoms' holds values >= 2**63")
    keys, points, clusters, mean_w, count_w = (atoms[i].astype(np.int64) for i in range(5))
    if a and np.any(np.diff(keys) <= 0):
        raise PayloadError(f"atom keys in '{prefix}atoms' must be strictly increasing (no duplicates)")
    _check_keys(keys, allowed_keys, f"{prefix}atoms")
    if a and (points.min() < 1 or clusters.min() < 1):
        raise PayloadError(f"every atom in '{prefix}atoms' must hold at least one point and one cluster")
    if a and points.max() > limits.max_points:
        raise PayloadError(f"an atom in '{prefix}atoms' claims {int(points.max())} points > PayloadLimits.max_points")
    cap = np.minimum(points, math.floor(delta) + 2)
    if np.any(clusters > cap):
        i = int(np.argmax(clusters > cap))
        raise PayloadError(
            f"atom {int(keys[i])} sends {int(clusters[i])} clusters for {int(points[i])} points; a δ = {delta:g} digest "
            f"has at most min(points, floor(δ) + 2) = {int(cap[i])}"
        )
    total = int(sum(clusters.tolist()))
    _check_values(total, limits, f"clusters in {name!r}")
    need = np.array([int(p - 1).bit_length() for p in points.tolist()], dtype=np.int64)
    if np.any(count_w > need):
        raise PayloadError(f"count bit widths in '{prefix}atoms' are wider than the atoms' point counts need")
    n_bits = int((clusters * count_w).sum())
    low_bits = int(((clusters - 1) * mean_w).sum())
    first, count_bytes, low, high = _split_data(
        _field(arrays, f"{prefix}data", 1, "u"), [8 * a, (n_bits + 7) // 8, (low_bits + 7) // 8], f"{prefix}data"
    )
    try:
        bits = unpack_bits(count_bytes, n_bits, f"{prefix}data (counts)")
        counts = split_uints(bits, np.repeat(count_w, clusters)).astype(np.int64) + 1
        offsets = np.concatenate([[0], np.cumsum(clusters)]).astype(np.int64)
        if a:
            # each count < 2**bit_length(points) <= 2 * max_points and there are <= max_client_values of them, so the
            # int64 sums cannot wrap (PayloadLimits keeps max_points * max_client_values < 2**62)
            sums = np.add.reduceat(counts, offsets[:-1])
            bad = (np.maximum.reduceat(counts, offsets[:-1]) > points) | (sums != points)
            if bad.any():
                i = int(np.argmax(bad))
                raise PayloadError(
                    f"atom {int(keys[i])}: cluster counts sum to {int(sums[i])}, but the atom claims {int(points[i])} points"
                )
            found = first_structure_violation(counts, offsets, delta)
            if found is not None:
                raise PayloadError(f"atom {int(keys[found[0]])} is not a valid δ = {delta:g} digest: {found[1]}")
        first = _first_values(first, f"{prefix}data (first means)")
        means = decode_sorted_floats(clusters, first, mean_w, low, high, field=f"{prefix}data (means)")
    except EncodingError as err:
        raise PayloadError(str(err)) from None
    return keys, points, offsets, means, counts


class _Encoded:
    """A summary with a wire form: ``nbytes`` is what its arrays carry."""

    def to_arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays a client sends."""
        return int(sum(a.nbytes for a in self.to_arrays().values()))


@dataclass
class DigestSummary(_Encoded):
    """One client's per-atom digests at one δ (the decoded form; see :meth:`to_arrays` for the wire form).

    Attributes
    ----------
    n : int
        Number of calibration points n_k on the client.
    delta : float
        Compression parameter (fixed by the block kind, not sent).
    atom_keys : (a,) int64
        Pattern keys of the atoms the client holds points of (atoms without points send nothing).
    offsets : (a + 1,) int64
        Clusters of atom i are ``means[offsets[i]:offsets[i + 1]]``.
    means : (c,) float64
        Cluster means.
    counts : (c,) int64
        Points per cluster.
    """

    n: int
    delta: float
    atom_keys: np.ndarray
    offsets: np.ndarray
    means: np.ndarray
    counts: np.ndarray

    @property
    def size(self) -> int:
        """Number of clusters (what a fit on this summary processes)."""
        return int(self.means.size)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Wire arrays: :func:`encode_digest_blocks` of the atoms (n_k is the sum of the atoms' points)."""
        sl = [slice(int(self.offsets[i]), int(self.offsets[i + 1])) for i in range(self.atom_keys.size)]
        return encode_digest_blocks(self.atom_keys.tolist(), [self.means[s] for s in sl], [self.counts[s] for s in sl])

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, np.ndarray],
        delta: float,
        allowed_keys: np.ndarray | int | None = None,
        limits: PayloadLimits = DEFAULT_LIMITS,
    ) -> "DigestSummary":
        """Validate and decode (see :func:`decode_digest_blocks`); n_k is the atoms' points summed (exactly)."""
        keys, points, offsets, means, counts = decode_digest_blocks(arrays, delta, allowed_keys, limits)
        n = sum(points.tolist())
        _check_points(n, limits)
        return cls(n=n, delta=float(delta), atom_keys=keys, offsets=offsets, means=means, counts=counts)

    def atom_blocks(self):
        """Yield ``(atom_key, means, counts)`` per atom."""
        for i, key in enumerate(self.atom_keys.tolist()):
            sl = slice(int(self.offsets[i]), int(self.offsets[i + 1]))
            yield key, self.means[sl], self.counts[sl]


def summarize_digests(scores: np.ndarray, atom_keys: np.ndarray, delta: float) -> DigestSummary:
    """Client side of GC-FCP: one T-digest per atom the client holds points of (Algorithm 1, lines 2-4).

    Every point of a client has the same weight λ_k, so the clustering depends only on counts; the digest is built
    on unit integer weights (exact). The paper's weights ``count · λ_k`` are formed by the server, which derives
    λ_k = π_k / (n_k + 1) from its own π, so the client sends the counts only.
    """
    # + 0.0 maps -0.0 to +0.0 (equal scores; the wire sends +0.0 anyway), so the digests do not depend on how a
    # sort orders the two zeros
    scores = check_scores(scores, allow_empty=True) + 0.0
    keys = np.asarray(atom_keys, dtype=np.int64)
    if keys.shape != scores.shape:
        raise ValueError(f"atom_keys must have one key per score ({scores.size}), got shape {keys.shape}")
    if keys.size and 0 <= keys.min() and keys.max() < 2**16:  # group by atom with a radix sort
        order = np.argsort(keys.astype(np.uint16), kind="stable")
    else:
        order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    values = scores[order]
    cuts = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    bounds = np.concatenate([[0], cuts, [keys.size]]).astype(np.int64) if keys.size else np.zeros(1, dtype=np.int64)
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        values[lo:hi].sort()  # tied scores are equal bit for bit (no -0.0), so their order does not matter
    # the same digests as build_digest per atom, bit for bit (tests/test_tdigest_fastpath.py)
    means, counts, offsets = compress_sorted_segments(values, None, bounds, delta)
    return DigestSummary(
        n=int(scores.size),
        delta=float(delta),
        atom_keys=sorted_keys[bounds[:-1]],
        offsets=offsets,
        means=means,
        counts=counts,
    )


@dataclass
class RawSummary(_Encoded):
    """Raw calibration scores and their atom keys (NOT private; centralized baselines only).

    Wire form: ``scores`` float64 in the client's order (the raw values themselves) and ``atom_keys`` in the
    smallest unsigned dtype that holds them.
    """

    scores: np.ndarray
    atom_keys: np.ndarray

    @property
    def n(self) -> int:
        return int(self.scores.size)

    @property
    def size(self) -> int:
        return int(self.scores.size)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"scores": self.scores.astype(np.float64), "atom_keys": as_small_uint(self.atom_keys.astype(np.int64))}

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], allowed_keys: np.ndarray | int | None = None, limits: PayloadLimits = DEFAULT_LIMITS
    ) -> "RawSummary":
        keys = _field(arrays, "atom_keys", 1, "iu")
        _check_values(keys.size, limits, "raw scores")
        _check_points(keys.size, limits, "len(scores)")
        scores = _floats(arrays, "scores")
        if scores.size != keys.size:
            raise PayloadError(f"scores and atom_keys differ in length: {scores.size} vs {keys.size}")
        if keys.size and int(keys.max()) >= 2**63:
            raise PayloadError("field 'atom_keys' holds values >= 2**63")
        keys = keys.astype(np.int64)
        _check_keys(np.unique(keys), allowed_keys, "atom_keys")
        return cls(scores=scores, atom_keys=keys)


@dataclass
class QQSummary(_Encoded):
    """FedCP-QQ: the client's n_k and its largest order statistics (enough for the server's rank).

    Wire form: ``head`` (3,) small uint — n, number of order statistics m, their Elias-Fano bit width; ``data``
    uint8 — the smallest of them (float64, 8 bytes), then the low and the unary high parts of the code of the
    others (:mod:`.encoding`): the m values in increasing order, bit-exact.
    """

    n: int
    top: np.ndarray  # decreasing

    @property
    def size(self) -> int:
        return int(self.top.size)

    def to_arrays(self) -> dict[str, np.ndarray]:
        blocks = [self.top[::-1].astype(np.float64)] if self.top.size else []
        first, widths, low, high = encode_sorted_floats(blocks)
        return {
            "head": as_small_uint([self.n, self.top.size, int(widths[0]) if widths.size else 0]),
            "data": np.concatenate([_float_bytes(first), low, high]),
        }

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], allowed_keys: np.ndarray | int | None = None, limits: PayloadLimits = DEFAULT_LIMITS
    ) -> "QQSummary":
        n, m, width = _uints(arrays, "head", 3)
        _check_points(n, limits)
        _check_values(m, limits, "order statistics")
        if m > n:
            raise PayloadError(f"{m} order statistics sent for n = {n} points")
        if width > 63:
            raise PayloadError(f"code width {width} in 'head' must be at most 63")
        first, low, high = _split_data(_field(arrays, "data", 1, "u"), [8 if m else 0, (max(m - 1, 0) * width + 7) // 8], "data")
        try:
            values = decode_sorted_floats(
                np.asarray([m] if m else [], dtype=np.int64), _first_values(first, "data (first value)"),
                np.asarray([width] if m else [], dtype=np.int64), low, high, field="data (top)",
            )
        except EncodingError as err:
            raise PayloadError(str(err)) from None
        return cls(n=n, top=values[::-1].copy())
