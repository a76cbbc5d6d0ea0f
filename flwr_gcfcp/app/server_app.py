"""The bundled ServerApp: FedAvg training of the app's model (or none: a given model, stored model outputs, the
regression model), then the conformal rounds through the public API
(:func:`flwr_gcfcp.flower.run_conformal_rounds`), exactly as a user's app would call them.

All settings come from ``[tool.flwr.app.config]`` (override with ``flwr run . --run-config "key=value"``).
Results go to ``results-dir`` (absolute; default ``<cwd>/results``): results.json, results.md, coverage.png,
model.npz and one ``predictor_<method>.json`` per method.
"""

from __future__ import annotations

import time
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flwr_gcfcp.app.config import AppConfig
from flwr_gcfcp.app.outputs import n_classes_for, regression_model_arrays
from flwr_gcfcp.app.partitions import dataset_kind, n_classes_of
from flwr_gcfcp.flower import ConformalReport, run_conformal_rounds, wait_for_nodes

app = ServerApp()


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


def train(grid: Grid, cfg: AppConfig, arrays: ArrayRecord) -> ArrayRecord:
    """FedAvg over every node for ``num-server-rounds`` (the waiting for nodes is bounded, FedAvg's is not)."""
    if cfg.num_server_rounds == 0:
        log(INFO, "num-server-rounds = 0: calibrating the given model without training")
        return arrays
    n = cfg.min_calibration_clients
    wait_for_nodes(grid, n, cfg.calibration_timeout, "training")
    fedavg = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_evaluate_nodes=0,
                    min_available_nodes=n)
    result = fedavg.start(grid, arrays, num_rounds=cfg.num_server_rounds, timeout=cfg.train_timeout,
                          train_config=ConfigRecord(cfg.client_config()))
    return result.arrays if len(result.arrays) > 0 else arrays


def run(grid: Grid, cfg: AppConfig) -> ConformalReport:
    t0 = time.perf_counter()
    arrays = train(grid, cfg, initial_arrays(cfg))
    report = run_conformal_rounds(
        grid,
        arrays,
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
        results_dir=cfg.results_path(),
        plot=cfg.plot,
        app_config=cfg.client_config(),
        run_config=cfg.to_run_config(),
        timings={"training_s": time.perf_counter() - t0},
    )
    log(INFO, "Results directory: %s", cfg.results_path())
    return report


@app.main()
def main(grid: Grid, context: Context) -> None:
    run(grid, AppConfig.from_mapping(context.run_config))
