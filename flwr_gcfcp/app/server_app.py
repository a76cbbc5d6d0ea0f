"""The bundled ServerApp: FedAvg training of the app's model (or none: a given model, stored model outputs, the
regression model), then the conformal rounds through the public API
(:class:`flwr_gcfcp.flower.ConformalRounds`, the object behind ``run_conformal_rounds``), as a user's app would.

All settings come from ``[tool.flwr.app.config]`` (override with ``flwr run . --run-config "key=value"``). Before
any training the run config, the conformal settings, the results folder (created and written) and the server's
data files are checked, and the nodes counted against ``client-classes``. Each run writes to its own folder
``<results-dir>/<UTC time>-<dataset>-<config hash>/`` (``results-dir`` absolute; default ``<cwd>/results``, and
``<results-dir>/latest`` points at it): run_config.json, status.json (``running``, then ``ok`` or ``failed`` with
the reason: :mod:`flwr_gcfcp.app.status`), results.json, results.md, coverage.png, model.npz and one
``predictor_<method>.json`` per method. With training, each round logs the accuracy of the global model on the
nodes' test images, and results.json records ``accuracy_before``, ``accuracy_after`` and ``training_rounds``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flwr_gcfcp.app import status as run_status
from flwr_gcfcp.app.config import AppConfig
from flwr_gcfcp.app.outputs import n_classes_for, regression_model_arrays
from flwr_gcfcp.app.partitions import dataset_kind, fold_classes, n_classes_of
from flwr_gcfcp.flower import ConformalReport, ConformalRounds, wait_for_nodes
from flwr_gcfcp.flower.reporting import write_results
from flwr_gcfcp.flower.server import one_line_reason

app = ServerApp()

#: Train-reply metric the bundled ClientApp adds so that FedAvg sums the updates in partition order.
PARTITION_METRIC = "partition-id"
#: Train-reply metrics of the bundled ClientApp: correct predictions of the received model on the node's test images.
TEST_CORRECT_METRIC, TEST_EXAMPLES_METRIC = "test-correct", "test-examples"


def _test_counts(correct: Any, total: Any, node_id: int, what: str) -> tuple[int, int] | None:
    """A node's (correct, total) test counts if they are integers with 0 <= correct <= total; else None (logged)."""
    if correct is None and total is None:
        return None
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (correct, total))
    if ints and 0 <= correct <= total:
        return correct, total
    log(WARNING, "%s: ignoring node %s's test counts (correct=%r, total=%r): not integers with "
        "0 <= correct <= total", what, node_id, correct, total)
    return None


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

    The averaged arrays keep the replies' dtypes (integer buffers such as BatchNorm's ``num_batches_tracked`` are
    rounded, not left as float64 means). The ClientApp's counts of correct test predictions of the model each round
    started from are pooled into ``history`` (round r - 1's accuracy, r = 1: before training) and logged.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history: list[dict[str, Any]] = []
        self.losses: list[float | None] = []

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

        correct, total = 0, 0
        for msg in ok:  # the test counts are the bundled ClientApp's, not FedAvg's to average
            for record in msg.content.metric_records.values():
                c, n = record.pop(TEST_CORRECT_METRIC, None), record.pop(TEST_EXAMPLES_METRIC, None)
                counted = _test_counts(c, n, msg.metadata.src_node_id, f"training round {server_round}")
                if counted is not None:
                    correct, total = correct + counted[0], total + counted[1]

        def key(msg: Message) -> tuple[int, str]:
            pid = None
            for record in msg.content.metric_records.values():
                pid = record.pop(PARTITION_METRIC, pid)
            valid = isinstance(pid, int) and not isinstance(pid, bool) and pid >= 0
            return (pid if valid else 1 << 62, _content_digest(msg))  # a bad claim only moves the node last

        ok = sorted(ok, key=key)
        arrays, metrics = super().aggregate_train(server_round, ok)
        if arrays is not None:
            arrays = _cast_like(arrays, ok[0].content.array_records)
        loss = float(metrics["train-loss"]) if metrics is not None and "train-loss" in metrics else None
        entry = {"round": server_round - 1, "accuracy": correct / total if total else None, "n": total}
        self.history.append(entry)
        self.losses.append(loss)
        if total:
            what = "before training" if server_round == 1 else f"after round {server_round - 1}"
            log(INFO, "[training] accuracy of the global model %s: %.4f on %d test images (round %d: mean local "
                "loss %s)", what, entry["accuracy"], total, server_round, "-" if loss is None else f"{loss:.4f}")
        return arrays, metrics


def _cast_like(arrays: ArrayRecord, replies: Mapping[str, ArrayRecord]) -> ArrayRecord:
    """``arrays`` with each entry cast to the dtype it had in a reply (integers rounded)."""
    ref = {k: v for record in replies.values() for k, v in record.items()}
    out = {}
    for key, arr in arrays.items():
        a = arr.numpy()
        dtype = ref[key].numpy().dtype if key in ref else a.dtype
        cast = np.rint(a).astype(dtype) if np.issubdtype(dtype, np.integer) else a.astype(dtype, copy=False)
        out[key] = Array(np.asarray(cast))  # 0-d entries (num_batches_tracked) stay arrays, not numpy scalars
    return ArrayRecord(out)


def initial_arrays(cfg: AppConfig) -> ArrayRecord:
    """Initial global model: a seeded SmallCNN, the shared pretrained ResNet-56 for cifar10-test-resnet56, the run
    config's ``model`` for cifar10-train, the fitted linear model for regression, nothing (an empty record) for
    stored outputs."""
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


def train(grid: Grid, cfg: AppConfig, arrays: ArrayRecord) -> tuple[ArrayRecord, dict[str, Any]]:
    """FedAvg over every node for ``num-server-rounds`` (call :func:`check_nodes` first: FedAvg's wait for nodes is
    not bounded); then the nodes' accuracy of the final model.

    Returns the trained arrays and the accuracy record for results.json (empty without training):
    ``accuracy_before``, ``accuracy_after`` (pooled over the nodes' test images) and ``training_rounds``
    (round 0 = before training: accuracy, test images, mean local loss of the round).
    """
    if cfg.num_server_rounds == 0:
        log(INFO, "num-server-rounds = 0: calibrating the given model without training")
        return arrays, {}
    n = cfg.min_calibration_clients  # check_nodes waited (bounded) for them
    fedavg = OrderedFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_evaluate_nodes=0,
                           min_available_nodes=n)
    result = fedavg.start(grid, arrays, num_rounds=cfg.num_server_rounds, timeout=cfg.train_timeout,
                          train_config=ConfigRecord(cfg.client_config()))
    arrays = result.arrays if len(result.arrays) > 0 else arrays
    rounds = [dict(h) for h in fedavg.history]
    final = final_accuracy(grid, cfg, arrays)
    if final is not None:
        rounds.append({"round": cfg.num_server_rounds, **final})
        log(INFO, "[training] accuracy of the global model after round %d: %.4f on %d test images (before training "
            "%s)", cfg.num_server_rounds, final["accuracy"], final["n"],
            "-" if not rounds or rounds[0]["accuracy"] is None else f"{rounds[0]['accuracy']:.4f}")
    for entry in rounds:  # round r's mean local loss belongs to the model after round r
        r = entry["round"]
        entry["train_loss"] = fedavg.losses[r - 1] if 1 <= r <= len(fedavg.losses) else None
    return arrays, {
        "accuracy_before": rounds[0]["accuracy"] if rounds else None,
        "accuracy_after": final["accuracy"] if final is not None else None,
        "training_rounds": rounds,
    }


def final_accuracy(grid: Grid, cfg: AppConfig, arrays: ArrayRecord) -> dict[str, Any] | None:
    """The bundled ClientApp's ``evaluate`` on every node: accuracy of ``arrays`` pooled over their test images
    (None, with a warning per cause, when no node answered)."""
    content = RecordDict({"arrays": arrays, "config": ConfigRecord(cfg.client_config())})
    messages = [
        Message(content=content, dst_node_id=int(nid), message_type=MessageType.EVALUATE, group_id="final-accuracy")
        for nid in sorted(grid.get_node_ids())
    ]
    replies = list(grid.send_and_receive(messages, timeout=cfg.train_timeout))
    for reason, nodes in _summarize(m for m in replies if m.has_error()).items():
        log(WARNING, "Final accuracy: %d node(s) failed (%s): %s", len(nodes), ",".join(map(str, sorted(nodes))), reason)
    correct, total = 0, 0
    for msg in replies:
        if msg.has_error():
            continue
        record = msg.content.metric_records.get("metrics")
        if record is not None and "test-correct" in record and "num-examples" in record:
            counted = _test_counts(record["test-correct"], record["num-examples"], msg.metadata.src_node_id,
                                   "final accuracy")
            if counted is not None:
                correct, total = correct + counted[0], total + counted[1]
    if not total:
        log(WARNING, "Final accuracy: no node reported test counts")
        return None
    return {"accuracy": correct / total, "n": total}


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
        arrays, accuracy = train(grid, cfg, arrays)
        report = rounds.run(grid, arrays, timings={"training_s": time.perf_counter() - t0})
        if accuracy:  # results.json (written by the conformal rounds) gains the training accuracy
            report.results.update(accuracy)
            report.files = write_results(report.results, report.files, run_dir, plot=False)
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
