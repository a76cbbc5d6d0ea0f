"""Server side of the conformal rounds: one call after any training loop.

.. code-block:: python

    from flwr_gcfcp.flower import run_conformal_rounds

    report = run_conformal_rounds(grid, arrays, alpha=0.1, groups="0-3;2-5;4-7;6-9", methods="gcfcp,fedcp",
                                  deltas="250", results_dir="/abs/dir")

:func:`run_conformal_rounds` is :class:`ConformalRounds` ``.run``: a calibration round (``configure_calibration``
-> the grid -> ``aggregate_calibration``: validation, identity binding, every method fitted from one round), the
thresholds and predictor files written at once, then an evaluation round (``configure_evaluation`` -> the grid ->
``aggregate_evaluation``: exact count validation, mixture-weighted coverage and set size). Each step is a method that
takes and returns plain messages and values, so it can be tested or overridden without a grid.

Faults never crash the server: an error reply (code 2 = the ClientApp raised or refused its outputs, code 5 = node
unavailable, mapped back to the node through ``reply_to_message_id``), a missing reply after ``timeout``, a reply of
another protocol version, a malformed payload or malformed counts exclude that node with the reason. Fewer usable
calibration clients than ``min_clients`` raises :class:`CalibrationError`; if no node returns valid evaluation counts
the thresholds are still written and the report says so.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from ..core.groups import GroupSpec, LabelSetGroups, parse_groups
from ..core.metrics import aggregate_counts, covgap, frac_undercov, to_jsonable
from ..core.validation import check_alpha, check_delta
from ..core.summaries import PayloadLimits
from ..methods import Calibrator, fit_all, make_calibrators, payload_bytes, predictor_arrays
from ..methods.robust import check_byzantine_clients
from . import reporting
from .protocol import (
    APP_CONFIG_KEY,
    CALIBRATE_MESSAGE_TYPE,
    CONFIG_KEY,
    COUNTS_KEY,
    EVALUATE_MESSAGE_TYPE,
    META_KEY,
    MODEL_KEY,
    PAYLOAD_KEY,
    PREDICTOR_KEY,
    PROTOCOL_VERSION,
    REGRESSION_SCORE,
    SPLIT_CALIBRATION,
    SPLIT_TEST,
    ProtocolError,
    RoundConfig,
    pack,
    reply_parts,
    validate_counts,
)

__all__ = [
    "CalibrationError",
    "CalibrationOutcome",
    "ConformalReport",
    "ConformalRounds",
    "PollingGrid",
    "run_conformal_rounds",
    "wait_for_nodes",
]

ERROR_CODE_NAMES = {
    0: "unknown error",
    1: "ClientApp could not be loaded",
    2: "ClientApp raised an exception",
    3: "message unavailable",
    4: "reply unavailable",
    5: "node unavailable",
    6: "mod failed precondition",
    7: "invalid FAB",
    8: "ClientApp crashed",
}


class CalibrationError(RuntimeError):
    """Too few nodes connected or gave a usable calibration payload, or no method could be fitted."""


# ---------------------------------------------------------------------------------------------------- grids
def wait_for_nodes(grid: Grid, needed: int, timeout: float, what: str = "calibration") -> list[int]:
    """Node ids once at least ``needed`` are connected; :class:`CalibrationError` after ``timeout`` seconds.

    (FedAvg's own wait for ``min_available_nodes`` has no bound: call this before its ``start``.)
    """
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if len(nodes) >= needed:
            return nodes
        if time.monotonic() >= deadline:
            raise CalibrationError(
                f"{what}: only {len(nodes)} node(s) connected after {timeout:g} s, need at least {needed} "
                "(min_clients / min-calibration-clients)"
            )
        time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))


class PollingGrid(Grid):
    """Delegating ``Grid`` whose ``send_and_receive`` polls every ``interval`` seconds.

    Flower's ``HttpGrid`` (used by ``flwr run`` and the deployment engine) sleeps 3 s between pulls, so every round
    costs at least 3 s even when the nodes answer in milliseconds. Everything else is delegated.
    """

    def __init__(self, grid: Grid, interval: float = 0.1) -> None:
        self._grid = grid
        self.interval = float(interval)

    def set_run(self, run) -> None:  # type: ignore[override]
        self._grid.set_run(run)

    @property
    def run(self):
        return self._grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self):
        return self._grid.get_node_ids()

    def get_nodes(self):
        return self._grid.get_nodes()

    def push_messages(self, messages):
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids):
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):
        msg_ids = {mid for mid in self._grid.push_messages(list(messages)) if mid}
        end = None if timeout is None else time.monotonic() + timeout
        out: list[Message] = []
        while msg_ids:
            got = list(self._grid.pull_messages(list(msg_ids)))
            out.extend(got)
            msg_ids.difference_update(m.metadata.reply_to_message_id for m in got)
            if not msg_ids or (end is not None and time.monotonic() >= end):
                break
            time.sleep(self.interval if end is None else max(0.0, min(self.interval, end - time.monotonic())))
        return out


def one_line_reason(text: str, limit: int = 400) -> str:
    """One line of an error text: the exception line of an embedded traceback (Ray and Flower put whole tracebacks
    into error replies), else its first line; cut at ``limit`` characters."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    if not lines:
        return ""
    line = lines[0]
    if any(ln.startswith("Traceback (most recent call last)") for ln in lines):
        exc_lines = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b:?", ln)]
        line = exc_lines[-1] if exc_lines else lines[-1]
        if not line.startswith(lines[0]) and not lines[0].startswith("Traceback"):
            line = f"{lines[0]} {line}"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _error_reason(msg: Message) -> str:
    code = int(msg.error.code)
    return f"error code {code} ({ERROR_CODE_NAMES.get(code, 'error')}): {one_line_reason(msg.error.reason)}"


def _reply_order(reply: Message) -> tuple[int, str]:
    """Sort key of a usable reply that does not depend on arrival order or node ids (random per run): the
    ``partition-id`` the node reports in its meta record, then a hash of its arrays."""
    pid = None
    if META_KEY in reply.content.config_records:
        value = reply.content.config_records[META_KEY].get("partition-id")
        pid = value if isinstance(value, int) and not isinstance(value, bool) else None
    h = hashlib.sha256()
    for name, record in sorted(reply.content.array_records.items()):
        for key, arr in sorted(record.items()):
            h.update(f"{name}/{key}".encode())
            h.update(arr.data)
    return (pid if pid is not None else 1 << 62, h.hexdigest())


def sort_replies(
    messages: Sequence[Message], replies: Sequence[Message], timeout: float
) -> tuple[dict[int, Message], dict[int, str]]:
    """(usable replies by node, failure reason by node) for the ``messages`` sent in one round.

    The usable replies are ordered by :func:`_reply_order`, not by arrival: every sum over clients downstream
    (digest merges, weights, counts) is then the same in every run with the same data."""
    by_msg_id = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in messages}
    ok: dict[int, Message] = {}
    failed: dict[int, str] = {}
    for reply in replies:
        node = by_msg_id.get(reply.metadata.reply_to_message_id)
        if node is None:  # not a reply to this round (code-5 replies come from the SuperLink: hence the map)
            continue
        if node in ok or node in failed:
            failed[node] = "more than one reply to one request"
            ok.pop(node, None)
        elif reply.has_error():
            failed[node] = _error_reason(reply)
        elif not reply.has_content():
            failed[node] = "empty reply"
        else:
            ok[node] = reply
    for nid in by_msg_id.values():
        if nid not in ok and nid not in failed:
            failed[nid] = f"no reply within the timeout ({timeout:g} s)"
    ok = dict(sorted(ok.items(), key=lambda item: _reply_order(item[1])))
    return ok, failed


# ---------------------------------------------------------------------------------------------------- results
@dataclass
class CalibrationOutcome:
    """What :meth:`ConformalRounds.aggregate_calibration` produced.

    ``weights`` are the mixture weights bound to node ids (raw, before renormalisation); ``excluded`` maps a node id
    (str) to ``{"node_id", "phase", "reason", ...}``.
    """

    calibrators: dict[str, Calibrator]
    used: list[str]
    weights: dict[str, float]
    n_labels: int
    excluded: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed_methods: dict[str, str] = field(default_factory=dict)
    node_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    bytes_per_client: dict[str, float] = field(default_factory=dict)
    partition_of: dict[str, int] = field(default_factory=dict)
    #: clients left out by the Byzantine-robust screening (``byzantine_clients > 0``), with the reason
    flagged: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: mean bytes of the clients' raw float64 calibration scores (8 n_k), to compare with ``bytes_per_client``
    raw_bytes_per_client: float = 0.0


@dataclass
class ConformalReport:
    """Outcome of :func:`run_conformal_rounds`.

    Attributes
    ----------
    arrays : ArrayRecord
        The model that was calibrated.
    calibrators : dict
        Fitted calibrators by method name (``gcfcp_delta250``, ``fedcp``, ...).
    predictors : dict
        JSON-able calibrated predictor of each method (``flwr_gcfcp.Predictor.from_dict`` for conformal methods).
    results : dict
        The content of ``results.json``: ``methods[NAME]`` (``marginal_coverage``, ``marginal_set_size``,
        ``group_coverage``, ``group_set_size``, ...), ``excluded_clients``, ``evaluation_excluded_clients``,
        ``status``, ...
    files : dict
        Paths written (empty without ``results_dir``).
    """

    arrays: ArrayRecord
    calibrators: dict[str, Calibrator]
    predictors: dict[str, Any]
    results: dict[str, Any]
    files: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> dict[str, dict[str, Any]]:
        """Per method: coverage, set sizes (group and marginal), privacy, fit details."""
        return self.results["methods"]

    @property
    def excluded(self) -> list[dict[str, Any]]:
        """Nodes excluded from the calibration, each with its reason."""
        return self.results["excluded_clients"]

    @property
    def evaluation_excluded(self) -> list[dict[str, Any]]:
        """Nodes whose evaluation counts were not used, each with its reason."""
        return self.results["evaluation_excluded_clients"]

    @property
    def status(self) -> str:
        return self.results["status"]

    def thresholds(self, method: str) -> dict[int, float]:
        """Threshold per atom key of a conformal method (``{0: t}`` for a marginal one)."""
        return self.calibrators[method].thresholds


# ---------------------------------------------------------------------------------------------------- rounds
def _method_list(methods: str | Sequence[str]) -> list[str]:
    out = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if str(m).strip()]
    if not out:
        raise ValueError(f"methods must name at least one method, got {methods!r}")
    return out


def _delta_list(deltas: str | float | Sequence[float]) -> tuple[float, ...]:
    if isinstance(deltas, str):
        try:
            deltas = [float(t) for t in deltas.split(",") if t.strip()]
        except ValueError as exc:
            raise ValueError(f"deltas must be comma-separated numbers, got {deltas!r}") from exc
    elif isinstance(deltas, (int, float)):
        deltas = [deltas]
    out = tuple(check_delta(float(d), "deltas") for d in deltas)
    if not out:
        raise ValueError("deltas must hold at least one value")
    return out


def _weights(mixture_weights: Any) -> tuple[str, Any]:
    """("uniform", None) | ("node", {node id: w}) | ("partition", [w per partition id])."""
    if mixture_weights is None or (isinstance(mixture_weights, str) and not mixture_weights.strip()):
        return "uniform", None
    if isinstance(mixture_weights, Mapping):
        kind, vals = "node", {int(k): float(v) for k, v in mixture_weights.items()}
        values = list(vals.values())
    else:
        if isinstance(mixture_weights, str):
            try:
                mixture_weights = [float(t) for t in mixture_weights.split(",")]
            except ValueError as exc:
                raise ValueError(f"mixture_weights must be numbers, got {mixture_weights!r}") from exc
        kind, vals = "partition", [float(w) for w in mixture_weights]
        values = vals
    if not values or any(not math.isfinite(w) or w <= 0 for w in values):
        raise ValueError(f"mixture_weights must be positive finite numbers, got {mixture_weights!r}")
    return kind, vals


class ConformalRounds:
    """The calibration and evaluation rounds as Flower-style configure / aggregate steps (see the module doc).

    Parameters are those of :func:`run_conformal_rounds`.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.1,
        groups: str | GroupSpec,
        methods: str | Sequence[str] = "gcfcp,fedcp",
        deltas: str | float | Sequence[float] = (250.0,),
        score: str = "softmax",
        conservative: bool = False,
        n_classes: int | None = None,
        mixture_weights: Mapping[int, float] | Sequence[float] | str | None = None,
        timeout: float = 120.0,
        min_clients: int = 2,
        seed: int = 0,
        results_dir: str | Path | None = None,
        plot: bool = True,
        app_config: Mapping[str, Any] | None = None,
        run_config: Mapping[str, Any] | None = None,
        poll_interval: float | None = 0.1,
        byzantine_clients: int = 0,
        limits: PayloadLimits | None = None,
    ) -> None:
        if isinstance(byzantine_clients, bool) or not isinstance(byzantine_clients, int) or byzantine_clients < 0:
            raise ValueError(f"byzantine_clients must be an integer >= 0, got {byzantine_clients!r}")
        if limits is not None and not isinstance(limits, PayloadLimits):
            raise ValueError(f"limits must be a flwr_gcfcp.core.summaries.PayloadLimits, got {limits!r}")
        self.byzantine_clients = byzantine_clients
        self.limits = limits
        self.alpha = check_alpha(alpha)
        self.methods = _method_list(methods)
        self.deltas = _delta_list(deltas)
        self.score = str(score).strip().lower()
        self.regression = self.score == REGRESSION_SCORE
        if not self.regression:
            from ..core.scores import make_score

            make_score(self.score)  # fail early on an unknown score
        self.conservative = bool(conservative)
        if n_classes is not None and (isinstance(n_classes, bool) or int(n_classes) < 1):
            raise ValueError(f"n_classes must be a positive int or None, got {n_classes!r}")
        if isinstance(groups, str):
            groups = parse_groups(groups, n_labels=1 if self.regression else n_classes)
        elif not isinstance(groups, GroupSpec):
            raise ValueError(f"groups must be a text spec or a GroupSpec, got {groups!r}")
        self.groups = groups
        self.groups_text = groups.to_text()
        self.n_classes = 1 if self.regression else (int(n_classes) if n_classes is not None else None)
        self.weight_kind, self.weight_values = _weights(mixture_weights)
        if timeout is None or not float(timeout) > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.timeout = float(timeout)
        if isinstance(min_clients, bool) or int(min_clients) < 1:
            raise ValueError(f"min_clients must be >= 1, got {min_clients!r}")
        self.min_clients = int(min_clients)
        self.seed = int(seed)
        self.results_dir = None if results_dir in (None, "") else Path(results_dir)
        self.plot = bool(plot)
        self.app_config = dict(app_config or {})
        self.run_config = dict(run_config or {})
        self.poll_interval = poll_interval
        self._make_calibrators(self.n_classes)  # fail early on bad method names

    # ------------------------------------------------------------------ helpers
    def _make_calibrators(self, n_labels: int | None) -> dict[str, Calibrator]:
        groups = self.groups
        if n_labels and isinstance(groups, LabelSetGroups) and groups.n_labels != n_labels:
            groups = parse_groups(self.groups_text, n_labels=n_labels)  # L known only from the nodes' outputs
        return make_calibrators(
            self.methods, groups, self.alpha, deltas=self.deltas, conservative=self.conservative, n_classes=n_labels
        )

    def round_config(self, split: str, n_clients: int, weight: float = 0.0, method_names=()) -> RoundConfig:
        return RoundConfig(
            split=split, methods=tuple(self.methods), groups=self.groups_text, alpha=float(self.alpha),
            deltas=self.deltas, conservative=self.conservative, score=self.score, n_classes=int(self.n_classes or 0),
            n_clients=int(n_clients), seed=self.seed, mixture_weight=float(weight), method_names=tuple(method_names),
        )

    def _node_weight(self, nid: int) -> float:
        """π of a node known before any reply (node-id weights), else 0 (the client then uses 1/K)."""
        if self.weight_kind != "node" or nid not in self.weight_values:
            return 0.0
        return self.weight_values[nid] / sum(self.weight_values.values())

    def _request(self, nid: int, arrays: ArrayRecord, rc: RoundConfig, extra: Mapping[str, Any]) -> Message:
        content = RecordDict({MODEL_KEY: arrays, CONFIG_KEY: rc.to_record(), **extra})
        if self.app_config:
            content[APP_CONFIG_KEY] = ConfigRecord(dict(self.app_config))
        return Message(content=content, dst_node_id=int(nid), message_type=_message_type(rc), group_id=rc.split)

    # ------------------------------------------------------------------ calibration
    def configure_calibration(self, arrays: ArrayRecord, node_ids: Sequence[int]) -> list[Message]:
        """One ``query.gcfcp_calibrate`` request per node (the model and the setup)."""
        return [
            self._request(nid, arrays, self.round_config(SPLIT_CALIBRATION, len(node_ids), self._node_weight(nid)), {})
            for nid in node_ids
        ]

    def aggregate_calibration(self, messages: Sequence[Message], replies: Sequence[Message]) -> CalibrationOutcome:
        """Validate the replies, bind identities and weights to nodes, fit every method from the payloads."""
        ok, failed = sort_replies(messages, replies, self.timeout)
        excluded: dict[str, dict[str, Any]] = {}

        def exclude(nid: int, reason: str, **info: Any) -> None:
            excluded[str(nid)] = {"node_id": int(nid), **info, "phase": "calibration", "reason": reason}
            log(WARNING, "Calibration: excluding node %s: %s", nid, reason)

        for nid, reason in failed.items():
            exclude(nid, reason)
        parts: dict[int, tuple[dict[str, np.ndarray], dict[str, Any]]] = {}
        for nid, reply in ok.items():
            try:
                payload, meta = reply_parts(reply, PAYLOAD_KEY)
                _check_meta(meta)
            except ProtocolError as exc:
                exclude(nid, f"malformed reply: {exc}")
                continue
            parts[nid] = (payload, meta)
        node_info = {
            str(nid): {
                "node_id": nid,
                "partition_id": meta.get("partition-id"),
                "n_calibration": int(meta["num-examples"]),
            }
            for nid, (_, meta) in parts.items()
        }
        n_labels = self._bind_labels(parts, exclude)
        weights, partition_of = self._bind_weights(parts, exclude)
        payloads = {str(nid): parts[nid][0] for nid in parts if str(nid) in weights}
        try:
            calibrators = self._make_calibrators(n_labels)
        except ValueError as exc:
            raise CalibrationError(f"calibration: the nodes' {n_labels} classes do not fit the setup: {exc}") from exc
        if self.byzantine_clients >= max(len(payloads), 1):
            raise CalibrationError(
                f"calibration: byzantine_clients={self.byzantine_clients} needs more than that many client payloads, "
                f"got {len(payloads)} (nothing could be certified)"
            )
        try:
            check_byzantine_clients(self.byzantine_clients, len(payloads))
        except ValueError as exc:
            raise CalibrationError(f"calibration: {exc}") from exc
        t_fit = time.perf_counter()
        fit = fit_all(
            calibrators, payloads, pi={c: weights[c] for c in payloads}, limits=self.limits,
            byzantine_clients=self.byzantine_clients,
        )
        for cid, reason in fit.excluded.items():
            exclude(int(cid), str(reason), **{k: v for k, v in node_info[cid].items() if k != "node_id"})
        for cid, n in fit.n_points.items():  # the points its payload holds, not what its meta record claims
            node_info[cid]["n_calibration"] = int(n)
        flagged = {
            cid: {"node_id": int(cid), "phase": "calibration", "reason": f"flagged by the robust screening: {reason}"}
            for cid, reason in fit.flagged.items()
        }
        for cid, info in flagged.items():
            log(WARNING, "Calibration: node %s left out by the Byzantine-robust screening: %s", cid, info["reason"])
        if len(fit.used) < self.min_clients:
            raise CalibrationError(
                f"calibration: only {len(fit.used)} usable client payload(s) out of {len(messages)} nodes, need at "
                f"least {self.min_clients} (min_clients / min-calibration-clients); excluded: "
                + "; ".join(f"{c}: {e['reason']}" for c, e in excluded.items())
            )
        for name, reason in fit.failed_methods.items():
            log(WARNING, "Calibration: method %s could not be fitted: %s", name, reason)
        fitted = {n: c for n, c in fit.calibrators.items() if n not in fit.failed_methods}
        if not fitted:
            raise CalibrationError(f"calibration: no method could be fitted: {fit.failed_methods}")
        sent = {}
        for name, cal in fitted.items():
            sizes = [payload_bytes(payloads[c]).get(cal.summary_kind, 0) for c in fit.used]
            sent[name] = float(np.mean(sizes)) if sizes else 0.0
        raw_bytes = float(np.mean([8 * fit.n_points[c] for c in fit.used])) if fit.used else 0.0
        log(INFO, "Calibrated %d method(s) on %d client(s) in %.1f ms", len(fitted), len(fit.used),
            1000 * (time.perf_counter() - t_fit))
        for name, cal in fitted.items():
            if not cal.private:
                log(WARNING, "Method %s is a centralized baseline: it uses raw scores (NOT private)", name)
        return CalibrationOutcome(
            calibrators=fitted, used=[str(c) for c in fit.used], weights=weights, n_labels=n_labels,
            excluded=excluded, failed_methods=dict(fit.failed_methods), node_info=node_info,
            bytes_per_client=sent, partition_of=partition_of, flagged=flagged, raw_bytes_per_client=raw_bytes,
        )

    def _bind_labels(self, parts: dict, exclude) -> int:
        """The label count L: the server's, or the one most nodes report (the others are excluded)."""
        if self.n_classes is not None:
            for nid in list(parts):
                got = parts[nid][1].get("n-classes", self.n_classes)
                if got != self.n_classes:
                    exclude(nid, f"reports {got} classes, the server calibrates {self.n_classes}")
                    del parts[nid]
            return int(self.n_classes)
        votes = Counter(int(meta.get("n-classes", 0)) for _, meta in parts.values())
        if not votes:
            return 0
        n_labels = votes.most_common(1)[0][0]
        for nid in list(parts):
            got = parts[nid][1].get("n-classes")
            if got != n_labels:
                exclude(nid, f"reports {got} classes, most nodes report {n_labels}")
                del parts[nid]
        return int(n_labels)

    def _bind_weights(self, parts: dict, exclude) -> tuple[dict[str, float], dict[str, int]]:
        """Mixture weight per node id, bound to the node (never to what a message claims).

        Node-id weights: a node without one is excluded. Weights per partition id: each ``partition-id`` may be
        claimed by one node only; every claimant of a duplicated id is excluded (conflicting identities), as is a
        node claiming none or one without a weight. The binding holds for the evaluation round.
        """
        weights: dict[str, float] = {}
        partition_of: dict[str, int] = {}
        claims: dict[int, list[int]] = {}
        for nid, (_, meta) in parts.items():
            pid = meta.get("partition-id")
            if isinstance(pid, int) and not isinstance(pid, bool):
                claims.setdefault(pid, []).append(nid)
                partition_of[str(nid)] = pid
        duplicated = {pid: nids for pid, nids in claims.items() if len(nids) > 1}
        for nid in list(parts):
            pid = partition_of.get(str(nid))
            if pid in duplicated:
                others = sorted(n for n in duplicated[pid] if n != nid)
                exclude(nid, f"duplicate identity: partition-id {pid} is also claimed by node(s) {others}")
                continue
            if self.weight_kind == "uniform":
                weights[str(nid)] = 1.0
            elif self.weight_kind == "node":
                if nid not in self.weight_values:
                    exclude(nid, f"no mixture weight for node id {nid} (mixture_weights is given per node id)")
                    continue
                weights[str(nid)] = self.weight_values[nid]
            else:
                if pid is None or not 0 <= pid < len(self.weight_values):
                    exclude(
                        nid,
                        f"partition-id {pid!r} has no mixture weight (mixture_weights has {len(self.weight_values)} "
                        "entries, one per partition id)",
                    )
                    continue
                weights[str(nid)] = self.weight_values[pid]
        for pid in duplicated:
            partition_of = {c: p for c, p in partition_of.items() if p != pid}
        return weights, partition_of

    # ------------------------------------------------------------------ evaluation
    def configure_evaluation(
        self, arrays: ArrayRecord, calibration: CalibrationOutcome, node_ids: Sequence[int]
    ) -> list[Message]:
        """One ``query.gcfcp_evaluate`` request per node: the model, the setup and every fitted rule."""
        pred: dict[str, np.ndarray] = {}
        for name, cal in calibration.calibrators.items():
            for key, arr in predictor_arrays(cal).items():
                pred[f"{name}/{key}"] = arr
        record = pack(pred)
        names = list(calibration.calibrators)
        total = sum(calibration.weights.values()) or 1.0
        return [
            self._request(
                nid, arrays,
                self.round_config(SPLIT_TEST, len(node_ids), calibration.weights.get(str(nid), 0.0) / total, names),
                {PREDICTOR_KEY: record},
            )
            for nid in node_ids
        ]

    def aggregate_evaluation(
        self, calibration: CalibrationOutcome, messages: Sequence[Message], replies: Sequence[Message]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """(per-method results, evaluation exclusions): counts validated exactly, mixed with the bound weights."""
        ok, failed = sort_replies(messages, replies, self.timeout)
        excluded: dict[str, dict[str, Any]] = {}

        def exclude(nid: int, reason: str) -> None:
            excluded[str(nid)] = {"node_id": int(nid), "phase": "evaluation", "reason": reason}
            log(WARNING, "Evaluation: no counts from node %s: %s", nid, reason)

        for nid, reason in failed.items():
            exclude(nid, reason)
        names = list(calibration.calibrators)
        counts: dict[str, dict[str, dict[str, np.ndarray]]] = {name: {} for name in names}
        weights: dict[str, float] = {}
        n_groups = self.groups.n_groups
        for nid, reply in ok.items():
            cid = str(nid)
            try:
                flat, meta = reply_parts(reply, COUNTS_KEY)
                weight = self._evaluation_weight(calibration, cid, meta)
                per_method = {}
                for name in names:
                    prefix = f"{name}/"
                    block = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
                    if not block:
                        raise ProtocolError(f"no counts for method {name!r}")
                    try:
                        per_method[name] = validate_counts(block, n_groups, calibration.n_labels, self.regression)
                    except ProtocolError as exc:
                        raise ProtocolError(f"method {name!r}: {exc}") from None
                stray = sorted({k.split("/", 1)[0] for k in flat} - set(names))
                if stray:
                    raise ProtocolError(f"counts for methods that were not sent: {stray}")
                ns = {int(c["n"][0]) for c in per_method.values()}
                if len(ns) > 1:
                    raise ProtocolError(f"methods disagree on the number of test points: {sorted(ns)}")
            except ProtocolError as exc:
                exclude(nid, f"malformed evaluation reply: {exc}")
                continue
            weights[cid] = weight
            for name in names:
                counts[name][cid] = per_method[name]
        results: dict[str, dict[str, Any]] = {}
        if not any(int(c["n"][0]) > 0 for c in next(iter(counts.values()), {}).values()):
            return results, excluded
        for name in names:
            agg = aggregate_counts(counts[name], weights)
            results[name] = to_jsonable(agg)
            results[name]["covgap"] = to_jsonable(covgap(agg["class_coverage"], self.alpha))
            results[name]["frac_undercov"] = to_jsonable(frac_undercov(agg["class_coverage"], self.alpha))
        return results, excluded

    def _evaluation_weight(self, calibration: CalibrationOutcome, cid: str, meta: Mapping[str, Any]) -> float:
        """The node's weight from the calibration binding; a changed identity claim is refused."""
        if self.weight_kind == "uniform":
            return 1.0
        if self.weight_kind == "node":
            nid = int(cid)
            if nid not in self.weight_values:
                raise ProtocolError(f"no mixture weight for node id {nid}")
            return self.weight_values[nid]
        bound = calibration.partition_of.get(cid)
        if bound is None:
            raise ProtocolError("no identity was bound to this node in the calibration round")
        claimed = meta.get("partition-id")
        if claimed != bound:
            raise ProtocolError(
                f"conflicting identity: claims partition-id {claimed!r} in evaluation, {bound} in calibration"
            )
        return self.weight_values[bound]

    # ------------------------------------------------------------------ the whole protocol
    def run(
        self, grid: Grid, arrays: ArrayRecord | None = None, timings: Mapping[str, float] | None = None
    ) -> ConformalReport:
        """Calibration round, fit, predictor files, evaluation round, results (see :func:`run_conformal_rounds`)."""
        arrays = ArrayRecord() if arrays is None else arrays
        if self.poll_interval and type(grid).__name__ == "HttpGrid":
            grid = PollingGrid(grid, self.poll_interval)
        times = dict(timings or {})
        t0 = time.perf_counter()
        nodes = wait_for_nodes(grid, self.min_clients, self.timeout, "calibration")
        log(INFO, "")
        log(INFO, "[CALIBRATION] %s to %d nodes (%s)", CALIBRATE_MESSAGE_TYPE, len(nodes), ",".join(self.methods))
        messages = self.configure_calibration(arrays, nodes)
        replies = list(grid.send_and_receive(messages, timeout=self.timeout))
        calibration = self.aggregate_calibration(messages, replies)
        times["calibration_s"] = time.perf_counter() - t0
        report = ConformalReport(
            arrays=arrays,
            calibrators=dict(calibration.calibrators),
            predictors={name: cal.predictor() for name, cal in calibration.calibrators.items()},
            results=self._results(calibration, {}, {}, times, "calibrated; evaluation pending"),
        )
        self._write(report, final=False)
        t1 = time.perf_counter()
        try:
            log(INFO, "[CONFORMAL EVALUATION] %s to %d nodes", EVALUATE_MESSAGE_TYPE, len(nodes))
            messages = self.configure_evaluation(arrays, calibration, nodes)
            replies = list(grid.send_and_receive(messages, timeout=self.timeout))
            evaluated, eval_excluded = self.aggregate_evaluation(calibration, messages, replies)
        except Exception as exc:
            report.results.update(
                status=f"evaluation failed ({type(exc).__name__}: {exc}); thresholds and predictors are kept"
            )
            self._write(report, final=True)
            log(WARNING, "Conformal evaluation failed; thresholds and predictors kept in %s", self.results_dir)
            raise
        times["evaluation_s"] = time.perf_counter() - t1
        times["total_s"] = times.get("training_s", 0.0) + time.perf_counter() - t0
        if evaluated:
            status = "evaluated"
        else:
            status = "evaluation failed: no node returned valid evaluation counts; thresholds and predictors are kept"
            log(WARNING, "Conformal evaluation: %s", status)
        report.results = self._results(calibration, evaluated, eval_excluded, times, status)
        self._write(report, final=True)
        for line in io.StringIO(reporting.format_table(report.results)):
            log(INFO, "%s", line.rstrip("\n"))
        return report

    def _results(self, cal: CalibrationOutcome, evaluated: dict, eval_excluded: dict, times: dict, status: str) -> dict:
        methods: dict[str, Any] = {}
        for name, c in cal.calibrators.items():
            m = dict(evaluated.get(name, {}))
            m["private"] = bool(c.private)
            m["bytes_per_client"] = cal.bytes_per_client.get(name, 0.0)
            m["raw_bytes_per_client"] = cal.raw_bytes_per_client
            m["fit_ms"] = 1000 * (c.fit_seconds or 0.0)
            if hasattr(c, "info"):  # what a class-conditional / set-valued fit chose (clusters, γ, threshold, T)
                m["fit"] = c.info()
            if self.regression and "marginal_set_size" in m:
                m["marginal_interval_length"] = m["marginal_set_size"]
                m["group_interval_length"] = m["group_set_size"]
            methods[name] = m
        config = self.run_config or dict(self.round_config(SPLIT_CALIBRATION, max(len(cal.used), 1)).to_record())
        return to_jsonable(
            {
                "status": status,
                "protocol_version": PROTOCOL_VERSION,
                "alpha": self.alpha,
                "target_coverage": 1.0 - self.alpha,
                "set_size_label": "interval length" if self.regression else "set size",
                "groups": {"text": self.groups_text, "names": list(self.groups.names)},
                "methods": methods,
                "private": {name: bool(c.private) for name, c in cal.calibrators.items()},
                "excluded_clients": [{"client": c, **e} for c, e in cal.excluded.items()],
                "flagged_clients": [{"client": c, **e} for c, e in cal.flagged.items()],
                "byzantine_clients": self.byzantine_clients,
                "failed_methods": cal.failed_methods,
                "evaluation_excluded_clients": [{"client": c, **e} for c, e in eval_excluded.items()],
                "calibration_clients": [{"client": c, **cal.node_info.get(c, {})} for c in cal.used],
                "evaluation_clients": sorted(evaluated[next(iter(evaluated))]["clients"]) if evaluated else [],
                "timings": times,
                "config": config,
            }
        )

    def _write(self, report: ConformalReport, final: bool) -> None:
        if self.results_dir is None:
            return
        if not final:  # results.json stays the final record (watchers such as deploy.py wait for it)
            report.files = reporting.write_predictors(report.predictors, report.arrays, self.results_dir)
            log(INFO, "Thresholds and predictors written to %s (before the evaluation round)", self.results_dir)
            return
        report.files = reporting.write_results(
            report.results, report.files, self.results_dir, plot=self.plot and final and bool(_has_coverage(report))
        )


def _has_coverage(report: ConformalReport) -> bool:
    return any("group_coverage" in m for m in report.results["methods"].values())


def _message_type(rc: RoundConfig) -> str:
    return CALIBRATE_MESSAGE_TYPE if rc.split == SPLIT_CALIBRATION else EVALUATE_MESSAGE_TYPE


def _check_meta(meta: Mapping[str, Any]) -> None:
    n = meta.get("num-examples")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ProtocolError(f"meta 'num-examples' must be an int >= 0, got {n!r}")
    pid = meta.get("partition-id")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int)):
        raise ProtocolError(f"meta 'partition-id' must be an int, got {pid!r}")
    labels = meta.get("n-classes")
    if isinstance(labels, bool) or not isinstance(labels, int) or labels < 1:
        raise ProtocolError(f"meta 'n-classes' must be an int >= 1, got {labels!r}")


def run_conformal_rounds(
    grid: Grid,
    arrays: ArrayRecord | None = None,
    *,
    alpha: float = 0.1,
    groups: str | GroupSpec,
    methods: str | Sequence[str] = "gcfcp,fedcp",
    deltas: str | float | Sequence[float] = (250.0,),
    score: str = "softmax",
    conservative: bool = False,
    n_classes: int | None = None,
    mixture_weights: Mapping[int, float] | Sequence[float] | str | None = None,
    timeout: float = 120.0,
    min_clients: int = 2,
    seed: int = 0,
    results_dir: str | Path | None = None,
    plot: bool = True,
    app_config: Mapping[str, Any] | None = None,
    run_config: Mapping[str, Any] | None = None,
    poll_interval: float | None = 0.1,
    byzantine_clients: int = 0,
    limits: PayloadLimits | None = None,
    timings: Mapping[str, float] | None = None,
) -> ConformalReport:
    """Run the conformal calibration and evaluation rounds on ``grid`` for the model ``arrays``.

    Call it in a ServerApp after any training (FedAvg's ``start``, a custom loop, or none); the nodes' ClientApps
    must have called :func:`flwr_gcfcp.flower.register_conformal_handlers`.

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The ServerApp's grid.
    arrays : ArrayRecord, optional
        The model sent to the nodes (e.g. ``FedAvg.start(...).arrays``); empty by default.
    alpha : float
        Miscoverage level in (0, 1).
    groups : str or GroupSpec
        Group family, e.g. ``"0-3;2-5;4-7;6-9"`` (by predicted label), ``"interval:0-2;1-3"``, ``"confidence:4"``,
        ``"matrix:3"`` (see ``flwr_gcfcp.parse_groups``).
    methods : str or sequence of str
        Method names (``gcfcp`` runs once per δ, ``fedcp``, ``split_cp``, ``condcp``, class-conditional and
        set-valued methods, ...), all calibrated from one round.
    deltas : str, float or sequence of float
        T-digest compressions (``"25,250"``).
    score : str
        ``softmax``/``lac``, ``aps``, ``raps``; ``residual`` for regression (nodes return predictions and targets).
    conservative : bool
        Also fit GC-FCP at level ``1 - α + π/δ``.
    n_classes : int, optional
        Number of labels L; default: the value most nodes report (nodes reporting another are excluded).
    mixture_weights : mapping, sequence, str or None
        π_k: ``{node_id: w}`` (bound to the node id), or one weight per ``partition-id`` (list or
        ``"1,1,2"``; a partition id claimed by two nodes excludes both), or None for uniform. Renormalised over the
        nodes used.
    timeout : float
        Seconds to wait for replies in each round, and for ``min_clients`` nodes to connect.
    min_clients : int
        Fewer usable calibration payloads raises :class:`CalibrationError`.
    seed : int
        Seed of the nodes' randomized scores and clustered splits.
    results_dir : str or Path, optional
        When given: predictor_<NAME>.json and model.npz right after calibration, then results.json, results.md and
        coverage.png (also when the evaluation fails, with the failure in ``status``).
    plot : bool
        Write coverage.png.
    app_config : mapping, optional
        Settings for the nodes' ``model_outputs`` (overlaid on their run config).
    run_config : mapping, optional
        Recorded as ``config`` in results.json (default: the protocol setup).
    poll_interval : float or None
        Reply polling interval replacing ``HttpGrid``'s fixed 3 s (None keeps Flower's).
    byzantine_clients : int
        Tolerate up to this many clients sending arbitrary well-formed summaries (FedCP, GC-FCP and the
        class-conditional methods; see ``docs/robustness.md`` for the guarantee). Clients the screening leaves out
        are listed in ``flagged_clients`` with the reason. Needs more usable payloads than this.
    limits : PayloadLimits, optional
        Bounds on each client's message (n_k range, values, bytes) and on each fit; default ``PayloadLimits()``
        (see ``docs/wire_format.md``).
    timings : mapping, optional
        Extra timings recorded in results.json (e.g. ``{"training_s": ...}``).

    Returns
    -------
    ConformalReport
        Fitted calibrators and predictors, per-method coverage and set sizes, excluded clients, files.
    """
    rounds = ConformalRounds(
        alpha=alpha, groups=groups, methods=methods, deltas=deltas, score=score, conservative=conservative,
        n_classes=n_classes, mixture_weights=mixture_weights, timeout=timeout, min_clients=min_clients, seed=seed,
        results_dir=results_dir, plot=plot, app_config=app_config, run_config=run_config,
        poll_interval=poll_interval, byzantine_clients=byzantine_clients, limits=limits,
    )
    return rounds.run(grid, arrays, timings=timings)
