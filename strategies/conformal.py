"""Conformal calibration on top of any Flower training strategy (Message API, flwr 1.41-1.42).

:class:`ConformalStrategy` is the wrapper form of :func:`flwr_gcfcp.flower.run_conformal_rounds`: ``start`` runs the
training rounds through the wrapped strategy (none when ``num_rounds == 0``: the given ``initial_arrays`` are
calibrated as is), then the conformal calibration and evaluation rounds. The Flower-style steps
(``configure_calibration``, ``aggregate_calibration``, ``configure_evaluation``, ``aggregate_evaluation``) are those
of :class:`flwr_gcfcp.flower.ConformalRounds`: override or test them without a grid. The wire format is
:mod:`flwr_gcfcp.flower.protocol`; the ClientApps need :func:`flwr_gcfcp.flower.register_conformal_handlers`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result, Strategy

from flwr_gcfcp.core.groups import GroupSpec
from flwr_gcfcp.flower.protocol import CALIBRATE_ACTION, EVALUATE_ACTION
from flwr_gcfcp.flower.server import (
    CalibrationError,
    CalibrationOutcome,
    ConformalReport,
    ConformalRounds,
    wait_for_nodes,
)

__all__ = ["CALIBRATE_ACTION", "EVALUATE_ACTION", "CalibrationError", "ConformalResult", "ConformalStrategy"]


@dataclass
class ConformalResult(Result):
    """Flower ``Result`` of the training part plus the :class:`~flwr_gcfcp.flower.ConformalReport`."""

    conformal: ConformalReport | None = None

    @property
    def calibrators(self) -> dict[str, Any]:
        return self.conformal.calibrators if self.conformal else {}

    @property
    def predictors(self) -> dict[str, Any]:
        return self.conformal.predictors if self.conformal else {}

    @property
    def report(self) -> dict[str, Any]:
        """The content of results.json."""
        return self.conformal.results if self.conformal else {}

    def __repr__(self) -> str:  # keep Flower's summary short
        return super().__repr__() + f"\nConformal methods: {sorted(self.calibrators)}\n"


class ConformalStrategy(Strategy):
    """Run training rounds with a wrapped strategy, then the conformal calibration and evaluation rounds.

    Parameters
    ----------
    train_strategy : Strategy, optional
        Any Flower (Message API) strategy used for the training rounds; default ``FedAvg`` with every node
        training, no federated evaluation, and ``min_available_nodes = min_calibration_clients``.
    methods, groups, alpha, deltas, conservative, score, n_classes, mixture_weights, seed, plot, run_config,
    poll_interval, byzantine_clients
        As in :func:`flwr_gcfcp.flower.run_conformal_rounds`.
    calibration_timeout : float
        Seconds to wait for replies in each conformal round (and for nodes to connect): ``timeout``.
    min_calibration_clients : int
        Fewer usable calibration payloads raises :class:`CalibrationError`: ``min_clients``.
    client_config : mapping, optional
        Settings for the nodes' ``model_outputs`` (``app_config``).
    results_dir : str or Path, optional
        When set, ``start`` writes results.json, results.md, coverage.png, model.npz and one predictor JSON per
        method.
    """

    def __init__(
        self,
        train_strategy: Strategy | None = None,
        *,
        methods: Sequence[str] | str = ("gcfcp",),
        groups: str | GroupSpec = "0-3;2-5;4-7;6-9",
        alpha: float = 0.1,
        deltas: Sequence[float] | str | float = (250.0,),
        conservative: bool = False,
        score: str = "softmax",
        n_classes: int | None = None,
        mixture_weights: Mapping[int, float] | Sequence[float] | str | None = None,
        calibration_timeout: float = 120.0,
        min_calibration_clients: int = 2,
        seed: int = 0,
        client_config: Mapping[str, Any] | None = None,
        results_dir: str | Path | None = None,
        plot: bool = True,
        run_config: Mapping[str, Any] | None = None,
        poll_interval: float | None = 0.1,
        byzantine_clients: int = 0,
    ) -> None:
        self.rounds = ConformalRounds(
            alpha=alpha, groups=groups, methods=methods, deltas=deltas, score=score, conservative=conservative,
            n_classes=n_classes, mixture_weights=mixture_weights, timeout=calibration_timeout,
            min_clients=min_calibration_clients, seed=seed, results_dir=results_dir, plot=plot,
            app_config=client_config, run_config=run_config, poll_interval=poll_interval,
            byzantine_clients=byzantine_clients,
        )
        if train_strategy is None:
            train_strategy = FedAvg(
                fraction_train=1.0,
                fraction_evaluate=0.0,
                min_train_nodes=self.rounds.min_clients,
                min_evaluate_nodes=0,
                min_available_nodes=self.rounds.min_clients,
            )
        self.train_strategy = train_strategy

    # ------------------------------------------------------------------ conformal steps (no grid needed)
    def configure_calibration(self, arrays: ArrayRecord, node_ids: Sequence[int]) -> list[Message]:
        return self.rounds.configure_calibration(arrays, node_ids)

    def aggregate_calibration(self, messages: Sequence[Message], replies: Sequence[Message]) -> CalibrationOutcome:
        return self.rounds.aggregate_calibration(messages, replies)

    def configure_evaluation(
        self, arrays: ArrayRecord, calibration: CalibrationOutcome, node_ids: Sequence[int]
    ) -> list[Message]:
        return self.rounds.configure_evaluation(arrays, calibration, node_ids)

    def aggregate_evaluation(self, calibration: CalibrationOutcome, messages, replies):
        return self.rounds.aggregate_evaluation(calibration, messages, replies)

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
        r = self.rounds
        log(INFO, "\t├──> Conformal calibration (%s):", self.__class__.__name__)
        log(INFO, "\t│\t├── methods: %s (alpha=%g, deltas=%s)", ",".join(r.methods), r.alpha, r.deltas)
        log(INFO, "\t│\t├── groups: %s", r.groups_text)
        log(INFO, "\t│\t└── timeout %g s, min clients %d", r.timeout, r.min_clients)
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
        result = ConformalResult(arrays=initial_arrays)
        if num_rounds > 0:
            needed = max(
                int(getattr(self.train_strategy, "min_available_nodes", 1)),
                int(getattr(self.train_strategy, "min_train_nodes", 1)),
            )
            wait_for_nodes(grid, needed, self.rounds.timeout, "training")
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
        result.conformal = self.rounds.run(grid, result.arrays, timings={"training_s": time.perf_counter() - t0})
        return result
