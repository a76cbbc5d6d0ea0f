"""Monte Carlo draws of the GC-FCP paper's synthetic regression benchmark (§6.1, App. E.1, Table 3).

The setting itself (clients, response model, linear fit) lives in :mod:`flwr_gcfcp.app.regression`, shared with the
Flower app's ``regression`` dataset.
"""

from __future__ import annotations

import numpy as np

from flwr_gcfcp.app.regression import (
    LinearModel,
    RegressionSetting,
    fit_linear,
    sample_client,
    sample_covariates,
    sample_mixture,
    sample_response,
)
from simulations.mc import Draw

__all__ = [
    "RegressionSetting",
    "LinearModel",
    "sample_covariates",
    "sample_response",
    "sample_client",
    "sample_mixture",
    "fit_linear",
    "regression_draw_fn",
]


def regression_draw_fn(setting: RegressionSetting, model: LinearModel | None = None, train_seed: int = 12345):
    """Each draw generates fresh calibration data per client and fresh test points from the mixture.

    The model is fitted once (on a training set from ``train_seed``) and reused by every draw, as the paper does.
    The draw's test "score matrix" is the single column ``|y - f(x)|`` with label 0, so coverage is
    ``|y - f(x)| <= q(x)``; set size is replaced by the interval width ``2 q(x)`` in reports.
    """
    K = setting.n_clients
    if model is None:
        trng = np.random.default_rng(train_seed)
        xt, yt, _ = sample_mixture(trng, setting.n_train, K)
        model = fit_linear(xt, yt)

    def draw(rng: np.random.Generator) -> Draw:
        xs, ys, cs = [], [], []
        for k in range(K):
            x, y = sample_client(rng, k, setting.n_per_client[k], K)
            xs.append(x)
            ys.append(y)
            cs.append(np.full(x.shape[0], k, dtype=np.int64))
        x_cal = np.concatenate(xs)
        y_cal = np.concatenate(ys)
        x_test, y_test, c_test = sample_mixture(rng, setting.n_test, K)
        cal_scores = np.abs(y_cal - model.predict(x_cal))
        test_scores = np.abs(y_test - model.predict(x_test))
        return Draw(
            cal_scores=cal_scores,
            cal_features=x_cal,
            cal_client=np.concatenate(cs),
            test_score_matrix=test_scores[:, None],
            test_labels=np.zeros(x_test.shape[0], dtype=np.int64),
            test_features=x_test,
            # The test points are a sample of the mixture itself: evaluate them pooled.
            test_client=None,
            n_clients=K,
            extra={"x_test": x_test, "y_test": y_test, "model": model, "x_cal": x_cal, "y_cal": y_cal},
        )

    draw.model = model  # type: ignore[attr-defined]
    return draw
