"""The bundled ServerApp: FedAvg training of the app's model (or none: a given model, stored model outputs, the
regression model), then the conformal rounds through the public API
(:class:`flwr_gcfcp.flower.ConformalRounds`, the object behind ``run_conformal_rounds``), as a user's app would.

All settings come from ``[tool.flwr.app.config]`` (override with ``flwr run . --run-config "key=value"``). Before
any training the run config, the conformal settings, the results folder (created and written) and the server's
data files are checked, and the nodes counted against ``client-classes``. Each run writes to its own folder
``<results-dir>/<UTC time>-<dataset>-<config hash>/`` (``results-dir`` absolute; default ``<cwd>/results``, and
``<results-dir>/latest`` points at it): run_config.json, status.json (``running``, then ``ok`` or ``failed`` with
the reason: :mod:`flwr_gcfcp.app.status`), results.json, results.md, coverage.png, model.npz and one
``predictor_<method>.json`` per method.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flwr_gcfcp.app import status as run_status
from flwr_gcfcp.app.config import AppConfig
from flwr_gcfcp.app.outputs import n_classes_for, regression_model_arrays
from flwr_gcfcp.app.partitions import dataset_kind, fold_classes, n_classes_of
from flwr_gcfcp.flower import ConformalReport, ConformalRounds, wait_for_nodes
from flwr_gcfcp.flower.server import one_line_reason

app = ServerApp()

#: Train-reply metric the bundled ClientApp adds so that FedAvg sums the updates in partition order.
PARTITION_METRIC = "partition-id"


class TrainingError(RuntimeError):
    """A training round in which no node returned a usable update (the reasons, one per cause)."""


def _content_digest(msg: Message) -> str:
    h = hashlib.sha256()
    for name, record in sorted(msg.content.array_records.items()):
        for key, arr in record.items():
            h.update(f"{name}/{key}".encode())
            h.update(arr.data)
    return h.hexdigest()


def _summarize(replies: Iterable[Message]) -> dict[str, list[int]]:
    """Error replies grouped by their one-line reason: {reason: [node ids]}."""
    out: dict[str, list[int]] = {}
    for msg in replies:
        out.setdefault(one_line_reason(msg.error.reason), []).append(int(msg.metadata.src_node_id))
    return out


class OrderedFedAvg(FedAvg):
    """FedAvg whose weighted sums do not depend on the order the replies arrive in, and that stops the run when a
    round gets no usable update.

    Float addition is not associative: summing the same updates in arrival order (which varies between runs, and
    between the Ray simulation, ``flwr run`` and the in-process grid) changes the model in its last bits, and 25
    rounds amplify that into different thresholds. Replies are summed in the order of the ``partition-id`` metric
    the bundled ClientApp reports (then of a hash of their arrays). Failed nodes are logged once per distinct
    reason; a round with no usable update raises :class:`TrainingError` instead of training on for nothing.
    """

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        ok = [m for m in replies if not m.has_error()]
        failed = _summarize(m for m in replies if m.has_error())
        for reason, nodes in failed.items():
            log(WARNING, "Training round %d: %d node(s) failed (%s): %s", server_round, len(nodes),
                ",".join(map(str, sorted(nodes))), reason)
        if replies and not ok:
            raise TrainingError(
                f"training round {server_round}: no node returned an update; "
                + "; ".join(f"{len(n)} node(s): {r}" for r, n in failed.items())
            )

        def key(msg: Message) -> tuple[int, str]:
            pid = None
            for record in msg.content.metric_records.values():
                pid = record.pop(PARTITION_METRIC, pid)
            return (int(pid) if pid is not None else 1 << 62, _content_digest(msg))

        return super().aggregate_train(server_round, sorted(ok, key=key))


def initial_arrays(cfg: AppConfig) -> ArrayRecord:
    """Initial global model: a seeded SmallCNN, the shared pretrained ResNet-56 for cifar10-test-resnet56, the
    fitted linear model for regression, nothing (an empty record) for stored outputs."""
    kind = dataset_kind(cfg.dataset)
    if kind == "outputs":  # the stored outputs are the model: nothing to send
        return ArrayRecord()
    if kind == "regression":
        return regression_model_arrays(cfg)
    from flwr_gcfcp.app.torch_model import initial_model_arrays

    return initial_model_arrays(cfg, n_classes_of(cfg.dataset))


def conformal_rounds(cfg: AppConfig) -> ConformalRounds:
    """The conformal rounds of ``cfg`` (building them checks methods, δ, groups, score, π and α)."""
    return ConformalRounds(
        alpha=cfg.alpha,
        groups=cfg.groups,
        methods=cfg.methods,
        deltas=cfg.deltas,
        score=cfg.score,
        conservative=cfg.conservative,
        n_classes=n_classes_for(cfg),
        mixture_weights=cfg.mixture_weights or None,
        timeout=cfg.calibration_timeout,
        min_clients=cfg.min_calibration_clients,
        byzantine_clients=cfg.byzantine_clients,
        seed=cfg.seed,
        results_dir=None,  # set to the run folder once it exists
        plot=cfg.plot,
        app_config=cfg.client_config(),
        run_config=cfg.to_run_config(),
    )


def check_nodes(grid: Grid, cfg: AppConfig) -> list[int]:
    """Wait (bounded) for ``min-calibration-clients`` nodes; refuse more nodes than ``client-classes`` entries."""
    what = "training" if cfg.num_server_rounds > 0 else "calibration"
    nodes = wait_for_nodes(grid, cfg.min_calibration_clients, cfg.calibration_timeout, what)
    try:
        fold_classes(cfg.class_lists(), len(nodes))
    except ValueError as exc:
        raise ValueError(f"run config: client-classes={cfg.client_classes!r} for {len(nodes)} nodes: {exc}") from None
    return nodes


def train(grid: Grid, cfg: AppConfig, arrays: ArrayRecord) -> ArrayRecord:
    """FedAvg over every node for ``num-server-rounds`` (call :func:`check_nodes` first: FedAvg's wait for nodes is
    not bounded)."""
    if cfg.num_server_rounds == 0:
        log(INFO, "num-server-rounds = 0: calibrating the given model without training")
        return arrays
    n = cfg.min_calibration_clients  # check_nodes waited (bounded) for them
    fedavg = OrderedFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_evaluate_nodes=0,
                           min_available_nodes=n)
    result = fedavg.start(grid, arrays, num_rounds=cfg.num_server_rounds, timeout=cfg.train_timeout,
                          train_config=ConfigRecord(cfg.client_config()))
    return result.arrays if len(result.arrays) > 0 else arrays


def run(grid: Grid, cfg: AppConfig) -> ConformalReport:
    """Check everything that can be checked, train, calibrate; the outcome goes to the run folder's status.json."""
    try:
        rounds = conformal_rounds(cfg)
    except ValueError as exc:
        record_config_failure(cfg.to_run_config(), exc)
        raise
    run_dir = run_status.create_run_dir(cfg.results_path(), cfg.dataset, cfg.to_run_config())
    rounds.results_dir = run_dir
    log(INFO, "Run folder: %s", run_dir)
    try:
        t0 = time.perf_counter()
        arrays = initial_arrays(cfg)  # reads the server's data files (pretrained weights, regression model)
        check_nodes(grid, cfg)
        arrays = train(grid, cfg, arrays)
        report = rounds.run(grid, arrays, timings={"training_s": time.perf_counter() - t0})
    except Exception as exc:
        reason = f"{type(exc).__name__}: {one_line_reason(str(exc))}"
        run_status.write_status(run_dir, "failed", reason)
        log(ERROR, "Run failed: %s (status in %s)", reason, run_dir / run_status.STATUS_FILE)
        raise
    if report.status == "evaluated":
        run_status.write_status(run_dir, "ok", report.status)
    else:  # thresholds and predictors are written, but no coverage was measured: a script should notice
        run_status.write_status(run_dir, "failed", report.status)
        log(ERROR, "Run failed: %s (status in %s)", report.status, run_dir / run_status.STATUS_FILE)
    log(INFO, "Results directory: %s", run_dir)
    return report


def record_config_failure(run_config: Mapping[str, Any], exc: Exception) -> Path | None:
    """A run config that did not validate: record the failure in a run folder of its results-dir when usable."""
    raw = str(run_config.get("results-dir", "") or "")
    base = Path(raw) if raw else Path.cwd() / "results"
    try:
        run_dir = run_status.create_run_dir(base, str(run_config.get("dataset", "invalid")), dict(run_config))
    except ValueError as err:
        log(ERROR, "Run failed: %s; its status could not be recorded (%s)", exc, err)
        return None
    run_status.write_status(run_dir, "failed", f"{type(exc).__name__}: {exc}")
    log(ERROR, "Run failed: %s (status in %s)", exc, run_dir / run_status.STATUS_FILE)
    return run_dir


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        cfg = AppConfig.from_mapping(context.run_config)
    except ValueError as exc:
        record_config_failure(context.run_config, exc)
        raise
    run(grid, cfg)
