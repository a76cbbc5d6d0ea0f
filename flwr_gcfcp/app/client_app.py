"""The bundled ClientApp: FedAvg training and evaluation of the app's model, plus the conformal rounds through
the public API (:func:`flwr_gcfcp.flower.register_conformal_handlers`), exactly as a user's app would add them.

Settings come from ``context.run_config`` overlaid with the config the ServerApp forwards with every request; the
partition from the node config (``partition-id``, ``num-partitions``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flwr_gcfcp.app.config import DEFAULTS, AppConfig
from flwr_gcfcp.flower import ModelOutputs, register_conformal_handlers
from flwr_gcfcp.flower.client import ERROR_CODE, describe_exception

app = ClientApp()


def _one_line_errors(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """An exception becomes an error reply (code 2) with a one-line reason, instead of a traceback that Flower logs
    for every node (a missing data file on 20 nodes used to give hundreds of log lines)."""

    @functools.wraps(handler)
    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as exc:
            return Message(Error(code=ERROR_CODE, reason=f"flwr-gcfcp app: {describe_exception(exc)}"), reply_to=msg)

    return wrapped


def _setup(context: Context, msg: Message | None = None) -> tuple[AppConfig, int, int]:
    overrides = dict(msg.content.config_records["config"]) if msg is not None and "config" in msg.content.config_records else {}
    run_cfg = {k: v for k, v in {**dict(context.run_config), **overrides}.items() if k in DEFAULTS}
    cfg = AppConfig.from_mapping(run_cfg)
    node_cfg = context.node_config
    if "partition-id" not in node_cfg or "num-partitions" not in node_cfg:
        raise ValueError(
            f"node config must set partition-id and num-partitions, got {dict(node_cfg)!r} "
            "(flower-supernode --node-config \"partition-id=0 num-partitions=5\")"
        )
    return cfg, int(node_cfg["partition-id"]), int(node_cfg["num-partitions"])


def _model_and_data(arrays: ArrayRecord, cfg: AppConfig, pid: int, npart: int):
    from flwr_gcfcp.app import torch_model
    from flwr_gcfcp.app.partitions import load_client_data

    torch_model.configure_torch()
    data = load_client_data(cfg, pid, npart)
    return torch_model.load_model(arrays, data.n_classes, cfg.dataset, cfg.model), data


def _correct(model, x: np.ndarray, y: np.ndarray, what: str) -> int:
    from flwr_gcfcp.app import torch_model

    if len(y) == 0:
        return 0
    return int(np.sum(torch_model.predict_proba(model, x, what).argmax(axis=1) == y))


@app.train()
@_one_line_errors
def train(msg: Message, context: Context) -> Message:
    from flwr_gcfcp.app import torch_model

    cfg, pid, npart = _setup(context, msg)
    config = msg.content.config_records.get("config", {})
    server_round = int(config.get("server-round", 1))  # FedAvg's round number seeds the local training
    model, data = _model_and_data(msg.content.array_records["arrays"], cfg, pid, npart)
    # accuracy of the global model this round starts from (round 1: before any training), for the server's log
    correct = _correct(model, data.x_test, data.y_test, f"test images of partition {pid}")
    loss = torch_model.train_local(model, data.x_train, data.y_train, cfg, server_round, pid)
    # partition-id: the server sums the updates in partition order (reproducible); it is removed before averaging,
    # as are the test counts
    metrics = {"num-examples": int(len(data.y_train)), "partition-id": pid, "test-correct": correct,
               "test-examples": int(len(data.y_test))}
    if np.isfinite(loss):
        metrics["train-loss"] = float(loss)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
@_one_line_errors
def evaluate(msg: Message, context: Context) -> Message:
    cfg, pid, npart = _setup(context, msg)
    model, data = _model_and_data(msg.content.array_records["arrays"], cfg, pid, npart)
    correct = _correct(model, data.x_test, data.y_test, f"test images of partition {pid}")
    n = int(len(data.y_test))
    metrics = MetricRecord({"num-examples": n, "accuracy": correct / n if n else 0.0, "test-correct": correct})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def model_outputs(arrays: ArrayRecord, context: Context, split: str) -> ModelOutputs:
    """This node's model outputs on its calibration or test split (the app's ``model_outputs`` callback)."""
    from flwr_gcfcp.app import outputs
    from flwr_gcfcp.app.partitions import dataset_kind

    cfg, pid, npart = _setup(context)
    part = "cal" if split == "calibration" else "test"
    kind = dataset_kind(cfg.dataset)
    if kind == "regression":
        d = outputs.regression_split(cfg, pid, npart)
        x, y = d[f"x_{part}"], d[f"y_{part}"]
        return ModelOutputs(predictions=outputs.linear_predict(arrays, x), targets=y, covariate=x)
    if kind == "outputs":
        probs, labels = outputs.load_outputs(cfg)
        idx = outputs.outputs_split(cfg, pid, npart)[part]
        return ModelOutputs(probs=np.asarray(probs[idx]), labels=np.asarray(labels[idx]))
    from flwr_gcfcp.app import torch_model

    model, data = _model_and_data(arrays, cfg, pid, npart)
    x, y = (data.x_cal, data.y_cal) if part == "cal" else (data.x_test, data.y_test)
    what = f"{split} images of partition {pid}"
    return ModelOutputs(probs=torch_model.predict_proba(model, x, what), labels=y)


register_conformal_handlers(app, model_outputs)
