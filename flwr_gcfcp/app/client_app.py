"""Flower ClientApp: FedAvg training, plus the two conformal rounds (calibration and conformal evaluation).

Every handler reads its settings from ``context.run_config`` overridden by the message's ConfigRecord (the
ServerApp forwards the effective values), and its partition from the node config (``partition-id``,
``num-partitions``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flwr_gcfcp.app import task
from strategies.conformal import (
    CALIBRATE_ACTION,
    CONFIG_KEY,
    COUNTS_KEY,
    EVALUATE_ACTION,
    META_KEY,
    MODEL_KEY,
    PAYLOAD_KEY,
    PREDICTOR_KEY,
    _pack,
    _unpack,
)

app = ClientApp()

_EXTRA_KEYS = ("n-clients", "method-names", "server-round")


def _setup(msg: Message, context: Context) -> tuple[task.AppConfig, int, int, dict[str, Any]]:
    msg_cfg = dict(msg.content.config_records[CONFIG_KEY]) if CONFIG_KEY in msg.content.config_records else {}
    extra = {k: msg_cfg.pop(k) for k in _EXTRA_KEYS if k in msg_cfg}
    run_cfg = {k: v for k, v in dict(context.run_config).items() if k in task.DEFAULTS}
    cfg = task.AppConfig.from_mapping(run_cfg, msg_cfg)
    node_cfg = context.node_config
    if "partition-id" not in node_cfg or "num-partitions" not in node_cfg:
        raise ValueError(
            f"node config must set partition-id and num-partitions, got {dict(node_cfg)!r} "
            "(flower-supernode --node-config \"partition-id=0 num-partitions=5\")"
        )
    return cfg, int(node_cfg["partition-id"]), int(node_cfg["num-partitions"]), extra


def _model_and_data(msg: Message, cfg: task.AppConfig, pid: int, npart: int):
    task.configure_torch()
    data = task.load_client_data(cfg, pid, npart)
    model = task.load_model(msg.content.array_records[MODEL_KEY], data.n_classes, cfg.dataset)
    return model, data


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, pid, npart, _ = _setup(msg, context)
    model, data = _model_and_data(msg, cfg, pid, npart)
    loss = task.train_local(model, data.x_train, data.y_train, cfg)
    metrics = {"num-examples": int(len(data.y_train))}
    if np.isfinite(loss):
        metrics["train-loss"] = float(loss)
    content = RecordDict({MODEL_KEY: ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, pid, npart, _ = _setup(msg, context)
    model, data = _model_and_data(msg, cfg, pid, npart)
    probs = task.predict_proba(model, data.x_test)
    acc = float(np.mean(probs.argmax(axis=1) == data.y_test))
    metrics = MetricRecord({"num-examples": int(len(data.y_test)), "accuracy": acc})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


@app.query(CALIBRATE_ACTION)
def calibrate(msg: Message, context: Context) -> Message:
    """Score the local calibration data with the global model; reply with the core's client payload."""
    from flwr_gcfcp.methods import client_payload

    cfg, pid, npart, extra = _setup(msg, context)
    n_clients = int(extra.get("n-clients", npart))
    local = task.local_scores(msg.content.array_records[MODEL_KEY], cfg, pid, npart, "cal")
    calibrators = task.make_calibrators(cfg, local.n_classes)
    pi_k = cfg.pi_for(pid, npart) if cfg.mixture_weights else 1.0 / n_clients
    payload = client_payload(
        calibrators, local.scores, local.features, pi_k=pi_k, n_clients=n_clients,
        labels=local.labels, probs=local.probs, rng=task.score_rng(cfg, pid, "split"),
    )
    meta = _meta(local, pid)
    return Message(content=RecordDict({PAYLOAD_KEY: _pack(payload), META_KEY: meta}), reply_to=msg)


@app.query(EVALUATE_ACTION)
def conformal_evaluate(msg: Message, context: Context) -> Message:
    """Build prediction sets (intervals for regression) on the local test data from each method's thresholds;
    reply with counts."""
    from flwr_gcfcp.methods import thresholds_from_arrays
    from flwr_gcfcp.methods import set_mask_from_arrays
    from flwr_gcfcp.core.metrics import evaluation_counts

    cfg, pid, npart, extra = _setup(msg, context)
    local = task.local_scores(msg.content.array_records[MODEL_KEY], cfg, pid, npart, "test")
    groups = task.make_groups(cfg, local.n_classes)
    membership = groups.membership(local.features)
    predictor = _unpack(msg.content.array_records[PREDICTOR_KEY])
    names = list(extra.get("method-names", []))
    out: dict[str, np.ndarray] = {}
    for name in names:
        prefix = f"{name}/"
        arrays = {k[len(prefix) :]: v for k, v in predictor.items() if k.startswith(prefix)}
        if "rule" in arrays:  # per-label thresholds (class-conditional) or a set-valued rule on the probabilities
            mask = set_mask_from_arrays(arrays, local.scores, local.features, groups, probs=local.probs)
            counts = evaluation_counts(mask, local.labels, membership)
        else:
            counts = task.evaluation_counts(cfg, local, thresholds_from_arrays(arrays, local.features, groups), membership)
        for key, value in counts.items():
            out[f"{name}/{key}"] = np.asarray(value)
    return Message(content=RecordDict({COUNTS_KEY: _pack(out), META_KEY: _meta(local, pid)}), reply_to=msg)


def _meta(local: task.LocalScores, pid: int) -> MetricRecord:
    meta: dict[str, Any] = {"num-examples": int(len(local.labels)), "partition-id": int(pid)}
    if local.accuracy is not None:
        meta["accuracy"] = float(local.accuracy)
    return MetricRecord(meta)
