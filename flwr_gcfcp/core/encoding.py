"""Exact compact wire encodings of integers and sorted float64 values (numpy only).

* :func:`smallest_uint` / :func:`as_small_uint`: non-negative integers in the narrowest of uint8/16/32/64.
* :func:`pack_uints` / :func:`unpack_uints`: fixed-width bit packing (width 0 sends nothing: all values 0).
* :func:`encode_sorted_floats` / :func:`decode_sorted_floats`: blocks of non-decreasing float64 values, bit-exact,
  as an Elias-Fano code of the order-preserving 64-bit keys of the values (per block: the first value in full,
  then ``l`` low bits per later value and the high parts in unary). For ``m`` values spread over a key range
  ``U`` this costs about ``2 + log2(U/m)`` bits per value, i.e. 6-7 bytes for calibration scores in [0, 1]
  instead of 8, with no loss: decoding returns the same bits (``-0.0`` is sent as ``+0.0``, equal to it).

Every decoder validates lengths, padding and ranges before it allocates anything proportional to the claimed
sizes, and raises :class:`EncodingError` (a ``ValueError``) naming the field.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "EncodingError",
    "as_small_uint",
    "decode_sorted_floats",
    "encode_sorted_floats",
    "float_order_keys",
    "order_keys_to_floats",
    "pack_uints",
    "smallest_uint",
    "split_uints",
    "unpack_bits",
    "unpack_uints",
]

_SIGN = np.uint64(1 << 63)
_ALL = np.uint64(2**64 - 1)


class EncodingError(ValueError):
    """An encoded field is inconsistent (length, padding or range); the message names the field."""


def smallest_uint(max_value: int) -> np.dtype:
    """The narrowest unsigned dtype holding ``0..max_value``."""
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"max_value must be < 2**64, got {max_value}")


def as_small_uint(values: object) -> np.ndarray:
    """Non-negative integers in the narrowest unsigned dtype that holds them all."""
    arr = np.asarray(values)
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"values must be integers, got dtype {arr.dtype}")
    if arr.size and int(arr.min()) < 0:
        raise ValueError(f"values must be >= 0, got {int(arr.min())}")
    return arr.astype(smallest_uint(int(arr.max()) if arr.size else 0))


def pack_uints(values: np.ndarray, width: int) -> np.ndarray:
    """Pack unsigned integers (each < 2**width) into bytes, most significant bit first."""
    if not 0 <= width <= 64:
        raise ValueError(f"width must be in [0, 64], got {width}")
    v = np.asarray(values, dtype=np.uint64)
    if width == 0 or v.size == 0:
        return np.zeros(0, dtype=np.uint8)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    bits = ((v[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits.reshape(-1))


def unpack_bits(buf: np.ndarray, n_bits: int, field: str) -> np.ndarray:
    """Unpack exactly ``n_bits`` bits; the buffer must have no spare byte and zero padding."""
    b = np.asarray(buf)
    if b.ndim != 1 or b.dtype != np.uint8:
        raise EncodingError(f"field {field!r} must be a 1-D uint8 array, got {b.dtype} shape {b.shape}")
    if b.size != (n_bits + 7) // 8:
        raise EncodingError(f"field {field!r} holds {b.size} bytes, {(n_bits + 7) // 8} expected for {n_bits} bits")
    bits = np.unpackbits(b)
    if bits[n_bits:].any():
        raise EncodingError(f"field {field!r} has non-zero padding bits")
    return bits[:n_bits]


def unpack_uints(buf: np.ndarray, count: int, width: int, field: str) -> np.ndarray:
    """Inverse of :func:`pack_uints` for ``count`` values of ``width`` bits (uint64)."""
    if not 0 <= width <= 64:
        raise EncodingError(f"bit width of {field!r} must be in [0, 64], got {width}")
    if width == 0:
        unpack_bits(buf, 0, field)
        return np.zeros(count, dtype=np.uint64)
    bits = unpack_bits(buf, count * width, field).reshape(count, width).astype(np.uint64)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    return (bits << shifts).sum(axis=1, dtype=np.uint64)


def float_order_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys with ``a <= b`` iff ``key(a) <= key(b)`` for finite float64 (``-0.0`` maps to ``+0.0``)."""
    v = np.asarray(values, dtype=np.float64) + 0.0  # -0.0 + 0.0 == +0.0; every other value is unchanged
    b = v.view(np.uint64)
    return np.where(b >= _SIGN, ~b, b | _SIGN)


def order_keys_to_floats(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`float_order_keys`."""
    k = np.asarray(keys, dtype=np.uint64)
    return np.where(k >= _SIGN, k & ~_SIGN, ~k).view(np.float64)


def encode_sorted_floats(blocks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Encode non-empty blocks of non-decreasing finite float64 values.

    Returns
    -------
    first : (a,) float64
        The first (smallest) value of each block.
    widths : (a,) int64
        Low-bit width ``l`` of each block's Elias-Fano code (0 for a one-value block).
    low : uint8
        The ``l`` low bits of ``key_i - key_0`` for the later values of every block, packed.
    high : uint8
        Per block, the high parts ``(key_i - key_0) >> l`` in unary (bit ``high_i + i`` set), concatenated, packed.
    """
    firsts, widths, low_bits, high_bits = [], [], [], []
    for i, block in enumerate(blocks):
        v = np.asarray(block, dtype=np.float64)
        if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
            raise ValueError(f"blocks[{i}] must be a non-empty 1-D array of finite values")
        keys = float_order_keys(v)
        if np.any(keys[1:] < keys[:-1]):
            raise ValueError(f"blocks[{i}] must be non-decreasing")
        firsts.append(float(v[0]) + 0.0)
        z = keys[1:] - keys[0]
        e = int(z.size)
        width = max(0, (int(z[-1]) // e).bit_length() - 1) if e else 0
        widths.append(width)
        if not e:
            continue
        if width:
            shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
            low_bits.append(((z[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).reshape(-1))
        high = (z >> np.uint64(width)).astype(np.int64)
        unary = np.zeros(int(high[-1]) + e, dtype=np.uint8)
        unary[high + np.arange(e)] = 1
        high_bits.append(unary)
    return np.asarray(firsts, dtype=np.float64), np.asarray(widths, dtype=np.int64), _pack(low_bits), _pack(high_bits)


def _pack(bit_arrays: list[np.ndarray]) -> np.ndarray:
    return np.packbits(np.concatenate(bit_arrays)) if bit_arrays else np.zeros(0, dtype=np.uint8)


def decode_sorted_floats(lengths: np.ndarray, first: np.ndarray, widths: np.ndarray, low: np.ndarray, high: np.ndarray,
                         field: str = "values") -> np.ndarray:
    """Inverse of :func:`encode_sorted_floats` given the block lengths; validates every part.

    The unary part is at most ``3 (m - 1)`` bits per block for any width the encoder can choose, so a longer one
    is rejected before it is unpacked.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    first = np.asarray(first)
    widths = np.asarray(widths, dtype=np.int64)
    a = lengths.size
    if first.shape != (a,) or first.dtype != np.float64 or not np.all(np.isfinite(first)):
        raise EncodingError(f"field '{field}/first' must hold {a} finite float64 values (one per block)")
    if widths.shape != (a,) or (a and (widths.min() < 0 or widths.max() > 63)):
        raise EncodingError(f"bit widths of {field!r} must be {a} integers in [0, 63]")
    if a and lengths.min() < 1:
        raise EncodingError(f"every block of {field!r} must hold at least one value")
    e = lengths - 1
    if np.any((e == 0) & (widths != 0)):
        raise EncodingError(f"a one-value block of {field!r} must have bit width 0")
    n_ones = int(e.sum())
    high = np.asarray(high)
    if high.ndim != 1 or high.dtype != np.uint8:
        raise EncodingError(f"field '{field}/high' must be a 1-D uint8 array")
    if high.size > (3 * n_ones + 7) // 8:
        raise EncodingError(f"field '{field}/high' holds {high.size} bytes, at most {(3 * n_ones + 7) // 8} allowed")
    hb = np.unpackbits(high)
    ones = np.flatnonzero(hb)
    if ones.size != n_ones:
        raise EncodingError(f"field '{field}/high' has {ones.size} set bits, {n_ones} expected")
    end = int(ones[-1]) + 1 if n_ones else 0
    if high.size != (end + 7) // 8:
        raise EncodingError(f"field '{field}/high' has trailing bytes after its last value")
    out = np.empty(int(lengths.sum()), dtype=np.float64)
    heads = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if a else np.zeros(0, np.int64)
    out[heads] = first + 0.0
    low_bits = unpack_bits(low, int((e * widths).sum()), f"{field}/low")
    if not n_ones:
        return out
    block = np.repeat(np.arange(a), e)  # block of each later value
    w = widths[block]
    low_vals = split_uints(low_bits, w)
    one_start = np.cumsum(e) - e  # index in ``ones`` of each block's first later value
    seg = np.where(one_start > 0, ones[np.maximum(one_start - 1, 0)] + 1, 0)  # where each block's unary part starts
    hi = (ones - seg[block] - (np.arange(n_ones) - one_start[block])).astype(np.uint64)
    uw = w.astype(np.uint64)
    bad = hi > (np.uint64(2**64 - 1) >> uw)
    if bad.any():
        raise EncodingError(f"field {field!r}: block {int(block[np.argmax(bad)])} decodes past the 64-bit key range")
    z = (hi << uw) | low_vals
    bad = (block[1:] == block[:-1]) & (z[1:] < z[:-1])
    if bad.any():
        raise EncodingError(f"field {field!r}: block {int(block[np.argmax(bad) + 1])} does not decode to non-decreasing values")
    base = float_order_keys(first)[block]
    bad = z > ~base  # base + z would pass 2**64 - 1
    if bad.any():
        raise EncodingError(f"field {field!r}: block {int(block[np.argmax(bad)])} decodes past the 64-bit key range")
    vals = order_keys_to_floats(base + z)
    bad = ~np.isfinite(vals)
    if bad.any():
        raise EncodingError(f"field {field!r}: block {int(block[np.argmax(bad)])} decodes to NaN or inf values")
    later = np.ones(out.size, dtype=bool)
    later[heads] = False
    out[later] = vals
    return out


def split_uints(bits: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Read consecutive unsigned integers of the given bit widths (<= 64 each, MSB first) from a bit array.

    ``bits`` must hold exactly ``sum(widths)`` bits; vectorised per distinct width.
    """
    widths = np.asarray(widths, dtype=np.int64)
    out = np.zeros(widths.size, dtype=np.uint64)
    starts = np.cumsum(widths) - widths
    for width in np.unique(widths[widths > 0]).tolist():
        sel = np.flatnonzero(widths == width)
        chunk = bits[starts[sel][:, None] + np.arange(width)].astype(np.uint64)
        out[sel] = (chunk << np.arange(width - 1, -1, -1, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
    return out
