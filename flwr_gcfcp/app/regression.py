"""The synthetic regression setting of the GC-FCP paper, §6.1 and App. E.1 (Table 3).

* K = 4 clients; client k's covariate is a normal with mean ``0.5 + 4 (k - 1) / (K - 1)`` and standard deviation
  ``0.5 + 0.1 (k - 1)``, truncated to [0, 5].
* Response ``Y = Pois(sin²(X) + 0.1) + 0.03 X ε1 + 25·1{U < 0.01} ε2 + N(0, 0.01 k²)`` with ε1, ε2 ~ N(0, 1),
  U ~ Unif(0, 1) (the last term has variance 0.01 k², standard deviation 0.1 k).
* A linear regression ``f(x) = a + b x`` fitted by least squares on a separate training set generated the same way
  (the mixture of the clients); score ``|y - f(x)|``; the prediction set is the interval ``f(x) ± q(x)``.
* Groups: covariate intervals [0, 2], [1, 3], [2, 4], [3, 5]. n_1 = 1000, n_k = 333 (k > 1), π_k = 1/K, α = 0.1,
  δ = 250, 200 test points from the mixture ``Σ π_k P_k``, 100 Monte Carlo runs.

Clients are numbered 1..K in the paper and 0..K-1 here (client index k ↔ paper's k + 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "RegressionSetting",
    "LinearModel",
    "sample_covariates",
    "sample_response",
    "sample_client",
    "sample_mixture",
    "fit_linear",
]

X_LOW, X_HIGH = 0.0, 5.0


@dataclass(frozen=True)
class RegressionSetting:
    n_clients: int = 4
    n_per_client: tuple[int, ...] = (1000, 333, 333, 333)
    n_test: int = 200
    n_train: int = 2000
    groups_text: str = "interval:0-2;1-3;2-4;3-5"
    alpha: float = 0.1
    delta: float = 250.0

    def __post_init__(self):
        if len(self.n_per_client) != self.n_clients:
            raise ValueError(
                f"n_per_client must have n_clients={self.n_clients} entries, got {self.n_per_client!r}"
            )


def client_mean_sd(k: int, n_clients: int) -> tuple[float, float]:
    """Paper's μ_k, σ_k for 0-based client index k."""
    mean = 0.5 + 4.0 * k / (n_clients - 1) if n_clients > 1 else 0.5
    sd = 0.5 + 0.1 * k
    return mean, sd


def sample_covariates(rng: np.random.Generator, n: int, mean: float, sd: float) -> np.ndarray:
    """Normal(mean, sd) truncated to [0, 5], by inverse-CDF sampling (exact, no rejection loop)."""
    from scipy.stats import norm

    lo = norm.cdf((X_LOW - mean) / sd)
    hi = norm.cdf((X_HIGH - mean) / sd)
    u = rng.uniform(lo, hi, size=n)
    x = mean + sd * norm.ppf(u)
    return np.clip(x, X_LOW, X_HIGH)


def sample_response(rng: np.random.Generator, x: np.ndarray, k: int) -> np.ndarray:
    """Equation (26) with the paper's 1-based client index ``k + 1``."""
    x = np.asarray(x, dtype=float)
    n = x.shape[0]
    eps1 = rng.standard_normal(n)
    eps2 = rng.standard_normal(n)
    u = rng.uniform(size=n)
    y = rng.poisson(np.sin(x) ** 2 + 0.1).astype(float)
    y += 0.03 * x * eps1
    y += 25.0 * (u < 0.01) * eps2
    y += rng.normal(0.0, 0.1 * (k + 1), size=n)
    return y


def sample_client(rng: np.random.Generator, k: int, n: int, n_clients: int = 4) -> tuple[np.ndarray, np.ndarray]:
    mean, sd = client_mean_sd(k, n_clients)
    x = sample_covariates(rng, n, mean, sd)
    return x, sample_response(rng, x, k)


def sample_mixture(
    rng: np.random.Generator, n: int, n_clients: int = 4, pi: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n points from ``Σ π_k P_k``: returns (x, y, client)."""
    pi = np.full(n_clients, 1.0 / n_clients) if pi is None else np.asarray(pi, dtype=float) / np.sum(pi)
    client = rng.choice(n_clients, size=n, p=pi)
    x = np.empty(n)
    y = np.empty(n)
    for k in range(n_clients):
        idx = np.flatnonzero(client == k)
        if idx.size:
            x[idx], y[idx] = sample_client(rng, k, idx.size, n_clients)
    return x, y, client


@dataclass(frozen=True)
class LinearModel:
    intercept: float
    slope: float

    def predict(self, x) -> np.ndarray:
        return self.intercept + self.slope * np.asarray(x, dtype=float)


def fit_linear(x: np.ndarray, y: np.ndarray) -> LinearModel:
    """Ordinary least squares with an intercept."""
    design = np.column_stack([np.ones_like(x), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return LinearModel(float(coef[0]), float(coef[1]))
