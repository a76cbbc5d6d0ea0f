"""Flower ServerApp: FedAvg training of the small CNN (or none: a given model, stored model outputs, the regression
model), then GC-FCP / FedCP / split-CP calibration rounds.

All settings come from ``[tool.flwr.app.config]`` (override with ``flwr run . --run-config "key=value"``).
Results go to ``results-dir`` (absolute; default ``<cwd>/results``): results.json, results.md, coverage.png and one
``predictor_<method>.json`` per method.
"""

from __future__ import annotations

from logging import INFO

from flwr.app import ConfigRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flwr_gcfcp.app import task
from strategies.conformal import ConformalResult, ConformalStrategy

app = ServerApp()

def build_strategy(cfg: task.AppConfig) -> ConformalStrategy:
    """The app's strategy: FedAvg (every node trains; no federated evaluation) wrapped for calibration."""
    train = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=cfg.min_calibration_clients,
        min_evaluate_nodes=0,
        min_available_nodes=cfg.min_calibration_clients,
    )
    return ConformalStrategy(
        train,
        methods=cfg.method_list(),
        groups=cfg.groups,
        alpha=cfg.alpha,
        deltas=cfg.delta_list(),
        conservative=cfg.conservative,
        n_classes=task.n_classes_for(cfg),
        mixture_weights=cfg.mixture_weights or None,
        calibration_timeout=cfg.calibration_timeout,
        min_calibration_clients=cfg.min_calibration_clients,
        client_config=cfg.client_config(),
        results_dir=cfg.results_path(),
        plot=cfg.plot,
        run_config=cfg.to_run_config(),
        set_size_label=task.set_size_label(cfg),
    )


def run(grid: Grid, cfg: task.AppConfig) -> ConformalResult:
    strategy = build_strategy(cfg)
    initial = task.initial_arrays(cfg)
    result = strategy.start(
        grid,
        initial,
        num_rounds=cfg.num_server_rounds,
        timeout=cfg.train_timeout,
        train_config=ConfigRecord(cfg.client_config()),
    )
    log(INFO, "Results directory: %s", cfg.results_path())
    return result


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = task.AppConfig.from_mapping(context.run_config)
    run(grid, cfg)
