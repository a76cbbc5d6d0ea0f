"""The wire format of the conformal rounds (version :data:`PROTOCOL_VERSION`): message types, record and key names,
dtypes, packing, and the exact checks each side applies. Described for humans in ``docs/protocol.md``.

Two rounds, each one Flower ``query`` message per node and one reply:

- calibration (``query.gcfcp_calibrate``): the server sends the model (``ArrayRecord`` :data:`MODEL_KEY`) and the
  setup (``ConfigRecord`` :data:`CONFIG_KEY`); the node replies with its summaries (``ArrayRecord``
  :data:`PAYLOAD_KEY`, ``"<summary kind>/<field>"`` arrays from ``methods.client_payload``) and
  ``ConfigRecord`` :data:`META_KEY`;
- evaluation (``query.gcfcp_evaluate``): the same plus the fitted rules (``ArrayRecord`` :data:`PREDICTOR_KEY`,
  ``"<method>/<field>"`` arrays from ``methods.predictor_arrays``); the node replies with its evaluation counts
  (``ArrayRecord`` :data:`COUNTS_KEY`, ``"<method>/<count>"``) and :data:`META_KEY`.

Every request and reply carries ``protocol-version``; a mismatch is a :class:`ProtocolError` naming both versions.
Settings the user's ``model_outputs`` callback needs (the bundled app's data knobs) travel in the optional
``ConfigRecord`` :data:`APP_CONFIG_KEY`; the protocol never reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

__all__ = [
    "APP_CONFIG_KEY",
    "CALIBRATE_ACTION",
    "CALIBRATE_MESSAGE_TYPE",
    "CONFIG_KEY",
    "COUNTS_KEY",
    "EVALUATE_ACTION",
    "EVALUATE_MESSAGE_TYPE",
    "META_KEY",
    "MODEL_KEY",
    "PAYLOAD_KEY",
    "PREDICTOR_KEY",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "RoundConfig",
    "check_version",
    "pack",
    "unpack",
    "validate_counts",
]

PROTOCOL_VERSION = 1
VERSION_KEY = "protocol-version"

CALIBRATE_ACTION = "gcfcp_calibrate"
EVALUATE_ACTION = "gcfcp_evaluate"
CALIBRATE_MESSAGE_TYPE = f"query.{CALIBRATE_ACTION}"
EVALUATE_MESSAGE_TYPE = f"query.{EVALUATE_ACTION}"

MODEL_KEY = "arrays"
CONFIG_KEY = "gcfcp.config"
APP_CONFIG_KEY = "gcfcp.app-config"
PREDICTOR_KEY = "gcfcp.predictor"
PAYLOAD_KEY = "gcfcp.payload"
COUNTS_KEY = "gcfcp.counts"
META_KEY = "gcfcp.meta"

SPLIT_CALIBRATION = "calibration"
SPLIT_TEST = "test"
REGRESSION_SCORE = "residual"

# The evaluation counts of one method (``core.metrics.evaluation_counts``): name -> length ("1", "groups", "labels").
COUNT_FIELDS = {
    "n": "1",
    "covered": "1",
    "size_sum": "1",
    "group_n": "groups",
    "group_covered": "groups",
    "group_size_sum": "groups",
    "class_n": "labels",
    "class_covered": "labels",
}


class ProtocolError(ValueError):
    """A message does not follow this protocol (version, record, key, dtype, shape or range); says which and why."""


def check_version(version: Any, where: str) -> None:
    """Raise :class:`ProtocolError` unless ``version`` is this module's :data:`PROTOCOL_VERSION`."""
    if version is None:
        raise ProtocolError(
            f"{where} carries no '{VERSION_KEY}'; this side speaks flwr-gcfcp protocol {PROTOCOL_VERSION}"
        )
    if isinstance(version, bool) or not isinstance(version, int) or version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version mismatch: {where} speaks flwr-gcfcp protocol {version!r}, this side speaks "
            f"{PROTOCOL_VERSION}; install the same flwr-gcfcp version on the server and every client"
        )


def pack(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Numeric numpy arrays -> ``ArrayRecord`` (exact; object arrays are refused)."""
    rec = ArrayRecord()
    for key, value in arrays.items():
        arr = np.ascontiguousarray(np.asarray(value))
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"array {key!r} has dtype {arr.dtype}; the protocol carries bool/int/float arrays only")
        rec[key] = Array(arr)
    return rec


def unpack(record: ArrayRecord, prefix: str = "") -> dict[str, np.ndarray]:
    """``ArrayRecord`` -> arrays whose key starts with ``prefix`` (prefix removed).

    Raises
    ------
    ProtocolError
        An array that does not decode, or is not a native-byte-order bool/int/float numpy array.
    """
    out = {}
    for key, value in record.items():
        if not key.startswith(prefix):
            continue
        try:
            arr = value.numpy()
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"array {key!r} does not decode as a numpy array: {exc}") from None
        if arr.dtype.kind not in "biuf" or not arr.dtype.isnative:
            raise ProtocolError(
                f"array {key!r} has dtype {arr.dtype.str}; the protocol carries native bool/int/float arrays only"
            )
        out[key[len(prefix) :]] = arr
    return out


def meta_record(**values: Any) -> ConfigRecord:
    """The :data:`META_KEY` record of a reply (version included)."""
    return ConfigRecord({VERSION_KEY: PROTOCOL_VERSION, **values})


def reply_parts(reply: Message, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Version-checked arrays under ``key`` and the meta record of a node's reply."""
    content = reply.content
    if META_KEY not in content.config_records:
        raise ProtocolError(f"reply has no '{META_KEY}' ConfigRecord (is the node running flwr-gcfcp?)")
    meta = dict(content.config_records[META_KEY])
    check_version(meta.get(VERSION_KEY), "the node's reply")
    if key not in content.array_records:
        raise ProtocolError(f"reply has no '{key}' ArrayRecord")
    return unpack(content.array_records[key]), meta


def _csv(values: Sequence[Any]) -> str:
    return ",".join(str(v) for v in values)


@dataclass(frozen=True)
class RoundConfig:
    """The server's setup, sent in :data:`CONFIG_KEY` with every request (the clients take nothing else from it).

    ``mixture_weight`` is the receiving node's own π_k (the server binds weights to node ids); ``method_names`` are
    the fitted methods whose rules the evaluation request carries (empty in calibration).
    """

    split: str
    methods: tuple[str, ...]
    groups: str
    alpha: float
    deltas: tuple[float, ...]
    conservative: bool
    score: str
    n_classes: int  # 0 = not fixed by the server (the client's probability rows decide)
    n_clients: int
    seed: int
    mixture_weight: float  # 0 = uniform (1 / n_clients)
    method_names: tuple[str, ...] = ()

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {
                VERSION_KEY: PROTOCOL_VERSION,
                "split": self.split,
                "methods": _csv(self.methods),
                "groups": self.groups,
                "alpha": float(self.alpha),
                "deltas": _csv(repr(float(d)) for d in self.deltas),
                "conservative": bool(self.conservative),
                "score": self.score,
                "n-classes": int(self.n_classes),
                "n-clients": int(self.n_clients),
                "seed": int(self.seed),
                "mixture-weight": float(self.mixture_weight),
                "method-names": _csv(self.method_names),
            }
        )

    @classmethod
    def from_record(cls, record: ConfigRecord | Mapping[str, Any]) -> "RoundConfig":
        cfg = dict(record)
        check_version(cfg.get(VERSION_KEY), "the server's request")
        types = {
            "split": str, "methods": str, "groups": str, "alpha": float, "deltas": str, "conservative": bool,
            "score": str, "n-classes": int, "n-clients": int, "seed": int, "mixture-weight": float,
            "method-names": str,
        }
        for key, typ in types.items():
            if key not in cfg:
                raise ProtocolError(f"server config has no '{key}'")
            value = cfg[key]
            ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
            if typ is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok:
                raise ProtocolError(f"server config '{key}' must be {typ.__name__}, got {value!r}")
        if cfg["split"] not in (SPLIT_CALIBRATION, SPLIT_TEST):
            raise ProtocolError(f"server config 'split' must be {SPLIT_CALIBRATION!r} or {SPLIT_TEST!r}, got {cfg['split']!r}")
        try:
            deltas = tuple(float(t) for t in cfg["deltas"].split(",") if t)
        except ValueError as exc:
            raise ProtocolError(f"server config 'deltas' must be comma-separated numbers, got {cfg['deltas']!r}") from exc
        if cfg["n-clients"] < 1 or cfg["n-classes"] < 0:
            raise ProtocolError(
                f"server config: n-clients must be >= 1 and n-classes >= 0, got {cfg['n-clients']} and {cfg['n-classes']}"
            )
        return cls(
            split=cfg["split"],
            methods=tuple(m for m in cfg["methods"].split(",") if m),
            groups=cfg["groups"],
            alpha=float(cfg["alpha"]),
            deltas=deltas,
            conservative=cfg["conservative"],
            score=cfg["score"],
            n_classes=cfg["n-classes"],
            n_clients=cfg["n-clients"],
            seed=cfg["seed"],
            mixture_weight=float(cfg["mixture-weight"]),
            method_names=tuple(m for m in cfg["method-names"].split(",") if m),
        )


def _ints(arr: np.ndarray, key: str) -> list[int]:
    if arr.dtype.kind not in "iu":
        raise ProtocolError(f"count {key!r} must hold integers, got dtype {arr.dtype}")
    vals = [int(v) for v in arr.tolist()]  # Python ints: sums and products below cannot wrap around
    if any(v >= 2**53 for v in vals):  # the mixture weights them in float64: keep them exact there
        raise ProtocolError(f"count {key!r} must be below 2**53, got {max(vals)}")
    return vals


def _floats(arr: np.ndarray, key: str) -> list[float]:
    if arr.dtype.kind not in "iuf":
        raise ProtocolError(f"count {key!r} must be numeric, got dtype {arr.dtype}")
    vals = [float(v) for v in arr.tolist()]
    if any(v != v or v < 0 for v in vals):
        raise ProtocolError(f"count {key!r} must be >= 0 and not NaN, got {vals}")
    return vals


def validate_counts(
    counts: Mapping[str, np.ndarray], n_groups: int, n_labels: int, interval_lengths: bool = False
) -> dict[str, np.ndarray]:
    """Check one method's evaluation counts exactly; return them as int64 (float64 interval lengths).

    Shapes follow :data:`COUNT_FIELDS`; every count is an integer with ``0 <= covered <= n``,
    ``0 <= size_sum <= n·L``, per group ``0 <= group_covered <= group_n <= n`` and
    ``0 <= group_size_sum <= group_n·L``, per class ``0 <= class_covered <= class_n``, ``Σ class_n = n`` and
    ``Σ class_covered = covered``. With ``interval_lengths`` (regression) the two size sums are lengths
    ``Σ 2·threshold``: finite or ``inf``, ``>= 0``. Raises :class:`ProtocolError` naming the first violation.
    """
    expected = {"1": 1, "groups": n_groups, "labels": n_labels}
    missing = sorted(set(COUNT_FIELDS) - set(counts))
    if missing:
        raise ProtocolError(f"missing count(s) {missing}")
    extra = sorted(set(counts) - set(COUNT_FIELDS))
    if extra:
        raise ProtocolError(f"unknown count(s) {extra}")
    arrs = {}
    for key, size in COUNT_FIELDS.items():
        arr = np.asarray(counts[key])
        if arr.shape != (expected[size],):
            raise ProtocolError(f"count {key!r} must have shape ({expected[size]},), got {arr.shape}")
        arrs[key] = arr
    real = {"size_sum", "group_size_sum"} if interval_lengths else set()
    v = {k: (_floats(a, k) if k in real else _ints(a, k)) for k, a in arrs.items()}
    n, covered = v["n"][0], v["covered"][0]

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ProtocolError(f"counts out of range: {what}")

    need(n >= 0, f"n = {n} < 0")
    need(0 <= covered <= n, f"covered = {covered} not in [0, n = {n}]")

    def size_ok(size: float, points: int) -> bool:  # interval lengths have no upper bound (a threshold may be inf)
        return size >= 0 and (size == 0 if points == 0 else (interval_lengths or size <= points * n_labels))

    need(size_ok(v["size_sum"][0], n), f"size_sum = {v['size_sum'][0]} not in [0, n·L = {n * n_labels}]")
    for g in range(n_groups):
        gn, gc, gs = v["group_n"][g], v["group_covered"][g], v["group_size_sum"][g]
        need(0 <= gn <= n, f"group_n[{g}] = {gn} not in [0, n = {n}]")
        need(0 <= gc <= gn, f"group_covered[{g}] = {gc} not in [0, group_n = {gn}]")
        need(size_ok(gs, gn), f"group_size_sum[{g}] = {gs} not in [0, group_n·L = {gn * n_labels}]")
    for c in range(n_labels):
        cn, cc = v["class_n"][c], v["class_covered"][c]
        need(cn >= 0, f"class_n[{c}] = {cn} < 0")
        need(0 <= cc <= cn, f"class_covered[{c}] = {cc} not in [0, class_n = {cn}]")
    need(sum(v["class_n"]) == n, f"sum(class_n) = {sum(v['class_n'])} != n = {n}")
    need(sum(v["class_covered"]) == covered, f"sum(class_covered) = {sum(v['class_covered'])} != covered = {covered}")
    return {
        k: np.asarray(v[k], dtype=np.float64 if k in real else np.int64) for k in COUNT_FIELDS
    }
