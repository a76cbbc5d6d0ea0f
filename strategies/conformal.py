"""Conformal calibration on top of any Flower training strategy (Message API, flwr 1.41).

:class:`ConformalStrategy` wraps a training strategy (``FedAvg`` by default). ``start`` runs the training rounds
through the wrapped strategy (none when ``num_rounds == 0``: the given ``initial_arrays`` are calibrated as is),
then

1. a **calibration round** (``query.gcfcp_calibrate``): every node scores its local calibration data with the
   final global model and replies with ``calibrators.client_payload(...)`` arrays (per-atom digests, a digest
   for FedCP, raw scores only when a centralized baseline was asked for) in an ``ArrayRecord``;
2. ``calibrators.fit_all`` at the server (payload validation, π renormalisation, all methods from one round);
3. a **conformal evaluation round** (``query.gcfcp_evaluate``): the thresholds (``predictor_arrays``) of every
   method go to the nodes, which reply with ``metrics.evaluation_counts`` on their local test data; the server
   mixes them with the π_k (``metrics.aggregate_counts``).

Faults: an error reply (code 2 = ClientApp exception, code 5 = node unavailable, mapped back to the node through
``reply_to_message_id``) or a missing reply after ``calibration_timeout`` excludes that node with the reason;
malformed payloads are excluded by ``fit_all``. Fewer usable nodes than ``min_calibration_clients`` raises
:class:`CalibrationError` (a ``RuntimeError``). Waiting for nodes is always bounded (FedAvg's own wait for
``min_available_nodes`` is not, so it is checked here first).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result, Strategy

CALIBRATE_ACTION = "gcfcp_calibrate"
EVALUATE_ACTION = "gcfcp_evaluate"
# Keys of the records exchanged in the two conformal rounds.
MODEL_KEY = "arrays"
CONFIG_KEY = "config"
PAYLOAD_KEY = "payload"
PREDICTOR_KEY = "predictor"
COUNTS_KEY = "counts"
META_KEY = "meta"

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

# Methods that need raw scores at the server (not private).
NON_PRIVATE_METHODS = ("split_cp", "condcp", "centralized_gcfcp", "mondrian")


class CalibrationError(RuntimeError):
    """Too few nodes answered (or none was connected) for a calibration or evaluation round."""


@dataclass
class ConformalResult(Result):
    """Flower ``Result`` of the training part plus everything the conformal rounds produced."""

    calibrators: dict[str, Any] = field(default_factory=dict)
    predictors: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    excluded: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __repr__(self) -> str:  # keep Flower's summary short
        return super().__repr__() + f"\nConformal methods: {sorted(self.calibrators)}\n"


def _pack(arrays: Mapping[str, np.ndarray], prefix: str = "") -> ArrayRecord:
    rec = ArrayRecord()
    for key, value in arrays.items():
        arr = np.ascontiguousarray(np.asarray(value))
        if arr.dtype == object:
            raise TypeError(f"array {prefix}{key!r} has dtype object; ArrayRecord carries numeric arrays only")
        rec[f"{prefix}{key}"] = Array(arr)
    return rec


def _unpack(record: ArrayRecord, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in record.items():
        if key.startswith(prefix):
            out[key[len(prefix) :]] = value.numpy()
    return out


def _reply_parts(reply: Message, key: str) -> tuple[dict[str, np.ndarray], MetricRecord, int | None]:
    """The arrays under ``key``, the client's meta record and its partition id (None when not sent)."""
    meta = reply.content.metric_records.get(META_KEY, MetricRecord())
    pid = int(meta["partition-id"]) if "partition-id" in meta else None
    return _unpack(reply.content.array_records[key]), meta, pid


def _error_reason(msg: Message) -> str:
    code = int(msg.error.code)
    return f"error code {code} ({ERROR_CODE_NAMES.get(code, 'error')}): {msg.error.reason}"


class PollingGrid(Grid):
    """Delegating ``Grid`` whose ``send_and_receive`` polls every ``interval`` seconds.

    Flower 1.41's ``HttpGrid`` (used by ``flwr run`` and the deployment engine) sleeps 3 s between pulls, so every
    round costs at least 3 s even when the nodes answer in milliseconds. Everything else is delegated.
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


class ConformalStrategy(Strategy):
    """Run training rounds with a wrapped strategy, then conformal calibration and evaluation rounds.

    Parameters
    ----------
    train_strategy : Strategy, optional
        Any Flower (Message API) strategy used for the training rounds; default ``FedAvg`` with every node
        training, no federated evaluation, and ``min_available_nodes = min_calibration_clients``.
    methods : sequence of str
        Core method names (``calibrators.make_calibrators``): ``split_cp``, ``fedcp``, ``fedcp_qq``,
        ``mondrian``, ``condcp``, ``centralized_gcfcp``, ``gcfcp`` (one per δ in ``deltas``).
    groups : str or GroupSpec
        Group definition, text form (``"0-3;2-5;4-7;6-9"``, groups by predicted label) or a ``GroupSpec``
        with ``to_text()`` (the clients rebuild it from the text).
    alpha, deltas, conservative
        Miscoverage level, T-digest compressions, optional ``1 - α + π/δ`` level (see ALGORITHMS.md §3).
    n_classes : int
        Number of labels (needed to parse label-set groups).
    mixture_weights : sequence of float or str, optional
        π per partition id (normalised); ``None``/``""`` = uniform over the nodes.
    calibration_timeout : float
        Seconds to wait for replies in each conformal round (and for nodes to connect).
    min_calibration_clients : int
        Fewer usable replies than this raises :class:`CalibrationError`.
    client_config : mapping, optional
        Extra ConfigRecord entries sent to every node in every round (the app sends its data/score knobs here).
    poll_interval : float, optional
        Reply polling interval used instead of ``HttpGrid``'s fixed 3 s (``None`` keeps Flower's grid as is).
    results_dir : str or Path, optional
        When set, ``start`` writes results.json, results.md, coverage.png and one predictor JSON per method.
    set_size_label : str
        What the clients' size counts measure: ``"set size"`` (labels per set) or ``"interval length"``
        (regression: ``2·threshold``); it names the column in results.md and, for intervals, adds
        ``marginal_interval_length`` / ``group_interval_length`` to each method in results.json.
    """

    def __init__(
        self,
        train_strategy: Strategy | None = None,
        *,
        methods: Sequence[str] = ("gcfcp",),
        groups: Any = "0-3;2-5;4-7;6-9",
        alpha: float = 0.1,
        deltas: Sequence[float] = (250.0,),
        conservative: bool = False,
        n_classes: int = 10,
        mixture_weights: Sequence[float] | str | None = None,
        calibration_timeout: float = 120.0,
        min_calibration_clients: int = 2,
        client_config: Mapping[str, Any] | None = None,
        results_dir: str | Path | None = None,
        plot: bool = True,
        run_config: Mapping[str, Any] | None = None,
        poll_interval: float | None = 0.1,
        set_size_label: str = "set size",
    ) -> None:
        from flwr_gcfcp.core.validation import check_alpha, check_delta

        if isinstance(methods, str):
            methods = [m.strip() for m in methods.split(",") if m.strip()]
        if not methods:
            raise ValueError(f"methods must name at least one method, got {methods!r}")
        if isinstance(deltas, (int, float)):
            deltas = (deltas,)
        self.methods = list(methods)
        self.alpha = check_alpha(alpha)
        self.deltas = tuple(check_delta(float(d)) for d in deltas)
        self.conservative = bool(conservative)
        self.n_classes = int(n_classes)
        self.groups = self._parse_groups(groups)
        self.groups_text = self.groups.to_text()
        if isinstance(mixture_weights, str):
            mixture_weights = [float(t) for t in mixture_weights.split(",")] if mixture_weights.strip() else None
        self.mixture_weights = None if mixture_weights is None else [float(w) for w in mixture_weights]
        if self.mixture_weights is not None and any(not np.isfinite(w) or w <= 0 for w in self.mixture_weights):
            raise ValueError(f"mixture_weights must be positive, got {mixture_weights!r}")
        if calibration_timeout is None or float(calibration_timeout) <= 0:
            raise ValueError(f"calibration_timeout must be > 0 seconds, got {calibration_timeout!r}")
        self.calibration_timeout = float(calibration_timeout)
        if int(min_calibration_clients) < 1:
            raise ValueError(f"min_calibration_clients must be >= 1, got {min_calibration_clients!r}")
        self.min_calibration_clients = int(min_calibration_clients)
        self.client_config = dict(client_config or {})
        self.results_dir = None if results_dir in (None, "") else Path(results_dir)
        self.plot = bool(plot)
        self.run_config = dict(run_config or {})
        self.poll_interval = poll_interval
        self.set_size_label = str(set_size_label)
        if train_strategy is None:
            train_strategy = FedAvg(
                fraction_train=1.0,
                fraction_evaluate=0.0,
                min_train_nodes=self.min_calibration_clients,
                min_evaluate_nodes=0,
                min_available_nodes=self.min_calibration_clients,
            )
        self.train_strategy = train_strategy
        self._calibrators = self._make_calibrators()  # fail early on bad method names

    # ------------------------------------------------------------------ helpers
    def _parse_groups(self, groups: Any):
        from flwr_gcfcp.core.groups import parse_groups

        if isinstance(groups, str):
            return parse_groups(groups, n_labels=self.n_classes)
        if not hasattr(groups, "to_text"):
            raise ValueError(f"groups must be a text spec or a GroupSpec with to_text(), got {groups!r}")
        return groups

    def _make_calibrators(self) -> dict[str, Any]:
        from flwr_gcfcp.methods import make_calibrators

        return make_calibrators(
            self.methods, self.groups, self.alpha, deltas=self.deltas, conservative=self.conservative,
            n_classes=self.n_classes,
        )

    def conformal_config(self, n_clients: int) -> ConfigRecord:
        """ConfigRecord sent with both conformal rounds: the method setup plus ``client_config``."""
        cfg: dict[str, Any] = dict(self.client_config)
        cfg.update(
            {
                "methods": ",".join(self.methods),
                "groups": self.groups_text,
                "alpha": float(self.alpha),
                "deltas": ",".join(f"{d:g}" for d in self.deltas),
                "conservative": bool(self.conservative),
                "mixture-weights": ",".join(repr(w) for w in self.mixture_weights) if self.mixture_weights else "",
                "n-clients": int(n_clients),
            }
        )
        return ConfigRecord(cfg)

    def _pi_of(self, partition_id: int | None, n_clients: int) -> float:
        if self.mixture_weights is None or partition_id is None:
            return 1.0 / n_clients
        if not 0 <= partition_id < len(self.mixture_weights):
            raise ValueError(
                f"partition-id {partition_id} has no mixture weight (mixture_weights has "
                f"{len(self.mixture_weights)} entries)"
            )
        return self.mixture_weights[partition_id] / sum(self.mixture_weights)

    def _wait_for_nodes(self, grid: Grid, needed: int, what: str, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            nodes = sorted(int(n) for n in grid.get_node_ids())
            if len(nodes) >= needed:
                return nodes
            if time.monotonic() >= deadline:
                raise CalibrationError(
                    f"{what}: only {len(nodes)} node(s) connected after {timeout:g} s, need at least {needed} "
                    "(min-calibration-clients / min_available_nodes)"
                )
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    def _round(
        self, grid: Grid, node_ids: Sequence[int], content_fn: Callable[[int], RecordDict], action: str, group: str
    ) -> tuple[dict[int, Message], dict[int, str]]:
        """Send one query to every node; return (ok replies by node, failure reason by node)."""
        messages = [
            Message(content=content_fn(nid), dst_node_id=int(nid), message_type=f"query.{action}", group_id=group)
            for nid in node_ids
        ]
        replies = list(grid.send_and_receive(messages, timeout=self.calibration_timeout))
        by_msg_id = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in messages}
        ok: dict[int, Message] = {}
        failed: dict[int, str] = {}
        for reply in replies:
            node = by_msg_id.get(reply.metadata.reply_to_message_id)
            if node is None:  # fall back on the source node (wrong for code-5 replies, hence the map above)
                node = int(reply.metadata.src_node_id)
            if reply.has_error():
                failed[node] = _error_reason(reply)
            elif not reply.has_content():
                failed[node] = "empty reply"
            else:
                ok[node] = reply
        for nid in node_ids:
            if nid not in ok and nid not in failed:
                failed[nid] = f"no reply within calibration-timeout ({self.calibration_timeout:g} s)"
        return ok, failed

    # ------------------------------------------------------------------ Strategy API (delegated)
    def configure_train(self, server_round, arrays, config, grid):
        return self.train_strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        return self.train_strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.train_strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.train_strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        log(INFO, "\t├──> Conformal calibration (%s):", self.__class__.__name__)
        log(INFO, "\t│\t├── methods: %s (alpha=%g, deltas=%s)", ",".join(self.methods), self.alpha, self.deltas)
        log(INFO, "\t│\t├── groups: %s", self.groups_text)
        log(
            INFO,
            "\t│\t└── timeout %g s, min clients %d",
            self.calibration_timeout,
            self.min_calibration_clients,
        )
        log(INFO, "\t└──> Training strategy: %s", self.train_strategy.__class__.__name__)
        self.train_strategy.summary()

    # ------------------------------------------------------------------ main entry
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> ConformalResult:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        result = ConformalResult(arrays=initial_arrays)
        if self.poll_interval and type(grid).__name__ == "HttpGrid":
            grid = PollingGrid(grid, self.poll_interval)
        if num_rounds > 0:
            needed = max(
                int(getattr(self.train_strategy, "min_available_nodes", 1)),
                int(getattr(self.train_strategy, "min_train_nodes", 1)),
            )
            self._wait_for_nodes(grid, needed, "training", self.calibration_timeout)
            train_result = self.train_strategy.start(
                grid,
                initial_arrays,
                num_rounds=num_rounds,
                timeout=timeout,
                train_config=train_config,
                evaluate_config=evaluate_config,
                evaluate_fn=evaluate_fn,
            )
            result.train_metrics_clientapp = train_result.train_metrics_clientapp
            result.evaluate_metrics_clientapp = train_result.evaluate_metrics_clientapp
            result.evaluate_metrics_serverapp = train_result.evaluate_metrics_serverapp
            if len(train_result.arrays) > 0:
                result.arrays = train_result.arrays
            else:
                log(WARNING, "No training round aggregated: calibrating the initial arrays")
        else:
            log(INFO, "num_rounds = 0: calibrating the given model without training")
        timings["training_s"] = time.perf_counter() - t0
        self.calibrate(grid, result, timings)
        timings["total_s"] = time.perf_counter() - t0
        result.report["timings"] = timings
        if self.results_dir is not None:
            from flwr_gcfcp.flower.reporting import write_results

            files = write_results(result, self.results_dir, alpha=self.alpha, plot=self.plot)
            result.report["files"] = files
            log(INFO, "Conformal results written to %s", self.results_dir)
        return result

    def calibrate(self, grid: Grid, result: ConformalResult, timings: dict[str, float] | None = None) -> None:
        """Calibration round + server fit + conformal evaluation round on ``result.arrays``."""
        from flwr_gcfcp.methods import fit_all, payload_bytes, predictor_arrays
        from flwr_gcfcp.core.metrics import aggregate_counts, covgap, frac_undercov

        timings = {} if timings is None else timings
        model = result.arrays
        t = time.perf_counter()
        nodes = self._wait_for_nodes(grid, self.min_calibration_clients, "calibration", self.calibration_timeout)
        n_clients = len(nodes)
        cfg = self.conformal_config(n_clients)
        log(INFO, "")
        log(INFO, "[CALIBRATION] query.%s to %d nodes (%s)", CALIBRATE_ACTION, n_clients, ",".join(self.methods))
        ok, failed = self._round(
            grid,
            nodes,
            lambda nid: RecordDict({MODEL_KEY: model, CONFIG_KEY: cfg}),
            CALIBRATE_ACTION,
            "calibration",
        )
        excluded: dict[str, dict[str, Any]] = {}
        node_info: dict[str, dict[str, Any]] = {}
        for nid, reason in failed.items():
            excluded[str(nid)] = {"node_id": nid, "phase": "calibration", "reason": reason}
            log(WARNING, "Calibration: excluding node %s: %s", nid, reason)
        payloads: dict[str, dict[str, np.ndarray]] = {}
        pi: dict[str, float] = {}
        for nid, reply in ok.items():
            cid = str(nid)
            try:
                payload, meta, pid = _reply_parts(reply, PAYLOAD_KEY)
                pi[cid] = self._pi_of(pid, n_clients)
            except Exception as exc:  # malformed reply structure: exclude, do not crash
                reason = f"malformed reply: {type(exc).__name__}: {exc}"
                excluded[cid] = {"node_id": nid, "phase": "calibration", "reason": reason}
                log(WARNING, "Calibration: excluding node %s: %s", nid, reason)
                continue
            payloads[cid] = payload
            node_info[cid] = {"node_id": nid, "partition_id": pid, "n_calibration": int(meta.get("num-examples", -1))}
        t_fit = time.perf_counter()
        report = fit_all(self._calibrators, payloads, pi=pi)
        timings["fit_s"] = time.perf_counter() - t_fit
        for cid, reason in report.excluded.items():
            excluded[str(cid)] = {**node_info.get(str(cid), {}), "phase": "calibration", "reason": str(reason)}
            log(WARNING, "Calibration: excluding node %s: %s", cid, reason)
        used = [str(c) for c in report.used]
        if len(used) < self.min_calibration_clients:
            raise CalibrationError(
                f"calibration: only {len(used)} usable client payload(s) out of {n_clients} nodes, need at least "
                f"{self.min_calibration_clients} (min-calibration-clients); excluded: "
                + "; ".join(f"{c}: {e['reason']}" for c, e in excluded.items())
            )
        failed_methods = dict(getattr(report, "failed_methods", {}) or {})
        for name, reason in failed_methods.items():
            log(WARNING, "Calibration: method %s could not be fitted: %s", name, reason)
        calibrators = {n: c for n, c in report.calibrators.items() if n not in failed_methods}
        if not calibrators:
            raise CalibrationError(f"calibration: no method could be fitted: {failed_methods}")
        timings["calibration_s"] = time.perf_counter() - t
        log(INFO, "Calibrated %d method(s) on %d client(s)", len(calibrators), len(used))
        for name, cal in calibrators.items():
            if not getattr(cal, "private", True):
                log(WARNING, "Method %s is a centralized baseline: it uses raw scores (NOT private)", name)

        # ---------------- conformal evaluation round
        t = time.perf_counter()
        pred_arrays: dict[str, np.ndarray] = {}
        for name, cal in calibrators.items():
            for key, arr in predictor_arrays(cal).items():
                pred_arrays[f"{name}/{key}"] = arr
        pred_record = _pack(pred_arrays)
        eval_cfg = ConfigRecord({**dict(cfg), "method-names": list(calibrators)})
        log(INFO, "[CONFORMAL EVALUATION] query.%s to %d nodes", EVALUATE_ACTION, n_clients)
        ok_e, failed_e = self._round(
            grid,
            nodes,
            lambda nid: RecordDict({MODEL_KEY: model, PREDICTOR_KEY: pred_record, CONFIG_KEY: eval_cfg}),
            EVALUATE_ACTION,
            "conformal-evaluation",
        )
        eval_excluded: dict[str, dict[str, Any]] = {}
        for nid, reason in failed_e.items():
            eval_excluded[str(nid)] = {"node_id": nid, "phase": "evaluation", "reason": reason}
            log(WARNING, "Evaluation: no counts from node %s: %s", nid, reason)
        counts: dict[str, dict[str, dict[str, np.ndarray]]] = {name: {} for name in calibrators}
        eval_pi: dict[str, float] = {}
        for nid, reply in ok_e.items():
            cid = str(nid)
            try:
                flat, _, pid = _reply_parts(reply, COUNTS_KEY)
                per_method: dict[str, dict[str, np.ndarray]] = {}
                for name in calibrators:
                    prefix = f"{name}/"
                    per_method[name] = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
                    if not per_method[name]:
                        raise ValueError(f"no counts for method {name!r}")
                eval_pi[cid] = self._pi_of(pid, n_clients)
            except Exception as exc:
                reason = f"malformed evaluation reply: {type(exc).__name__}: {exc}"
                eval_excluded[cid] = {"node_id": nid, "phase": "evaluation", "reason": reason}
                log(WARNING, "Evaluation: excluding node %s: %s", nid, reason)
                continue
            for name in calibrators:
                counts[name][cid] = per_method[name]
        if not eval_pi:
            raise CalibrationError(
                f"conformal evaluation: no node returned evaluation counts ({len(nodes)} asked): "
                + "; ".join(f"{c}: {e['reason']}" for c, e in eval_excluded.items())
            )
        methods_report: dict[str, Any] = {}
        for name, cal in calibrators.items():
            agg = aggregate_counts(counts[name], eval_pi)
            methods_report[name] = {**_jsonable(agg), "private": bool(getattr(cal, "private", True))}
            # per-class coverage is in agg; CovGap / FracUnderCov (Ding et al.) summarise it for every method
            methods_report[name]["covgap"] = _jsonable(covgap(agg["class_coverage"], self.alpha))
            methods_report[name]["frac_undercov"] = _jsonable(frac_undercov(agg["class_coverage"], self.alpha))
            # what each client sent for this method (its summary block; shared blocks count for every method using them)
            kind = getattr(cal, "summary_kind", "")
            sent = [payload_bytes(payloads[c]).get(kind, 0) for c in used if c in payloads]
            methods_report[name]["bytes_per_client"] = _jsonable(float(np.mean(sent)) if sent else 0.0)
            methods_report[name]["fit_ms"] = _jsonable(1000 * (getattr(cal, "fit_seconds", None) or 0.0))
            if hasattr(cal, "info"):  # what a class-conditional / set-valued fit chose (clusters, γ, threshold, T)
                methods_report[name]["fit"] = _jsonable(cal.info())
            if self.set_size_label == "interval length":
                methods_report[name]["marginal_interval_length"] = methods_report[name]["marginal_set_size"]
                methods_report[name]["group_interval_length"] = methods_report[name]["group_set_size"]
        timings["evaluation_s"] = time.perf_counter() - t

        result.calibrators = dict(calibrators)
        result.predictors = {name: cal.predictor() for name, cal in calibrators.items()}
        result.excluded = excluded
        result.report.update(
            {
                "alpha": self.alpha,
                "target_coverage": 1.0 - self.alpha,
                "set_size_label": self.set_size_label,
                "groups": {"text": self.groups_text, "names": list(getattr(self.groups, "names", []))},
                "methods": methods_report,
                "private": {name: bool(getattr(cal, "private", True)) for name, cal in calibrators.items()},
                "excluded_clients": [{"client": c, **e} for c, e in excluded.items()],
                "failed_methods": failed_methods,
                "evaluation_excluded_clients": [{"client": c, **e} for c, e in eval_excluded.items()],
                "calibration_clients": [{"client": c, **node_info.get(c, {})} for c in used],
                "evaluation_clients": sorted(eval_pi),
                "config": _jsonable(self.run_config) if self.run_config else _jsonable(dict(cfg)),
            }
        )
        from flwr_gcfcp.flower.reporting import format_table

        for line in io.StringIO(format_table(result.report)):
            log(INFO, "%s", line.rstrip("\n"))


def _jsonable(obj: Any) -> Any:
    try:
        from flwr_gcfcp.core.metrics import to_jsonable

        return to_jsonable(obj)
    except ImportError:  # pragma: no cover - metrics.py always present in a full install
        return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
