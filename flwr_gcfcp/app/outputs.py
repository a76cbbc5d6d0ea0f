"""Data sets without training: stored model outputs (``dataset = "outputs"``) and the §6.1 regression.

Stored outputs: an npz with ``labels`` and one of ``logits``/``probs``/``log_probs``; one seeded permutation splits
calibration and test points, each going to the node holding its TRUE label. Regression: the paper's generator and
a linear model fitted at the server (the "given model" sent to the nodes).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from flwr_gcfcp.app.config import AppConfig
from flwr_gcfcp.app.partitions import dataset_kind, fold_classes, n_classes_of


def resolve_outputs_path(path: str, data_dir: str = "") -> Path:
    """``outputs-path``: absolute as given; relative to the shared data folder (``data-dir``, ``$FLWR_GCFCP_DATA``
    or ``../shared/data`` next to the package's checkout: ``datasets.shared_data_dir``)."""
    from flwr_gcfcp.app import datasets as data_mod

    p = Path(str(path).strip()).expanduser()
    if p.is_absolute():
        return p
    try:
        return data_mod.require_shared(p, skip=False, data_dir=data_dir)
    except FileNotFoundError:
        return data_mod.shared_data_dir(data_dir) / p


def load_outputs(cfg: AppConfig) -> tuple[np.ndarray, np.ndarray]:
    """(probs (n, L) float64, labels (n,) int64) of ``outputs-path`` (``data.load_model_outputs``)."""
    path = resolve_outputs_path(cfg.outputs_path, cfg.data_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"run config: outputs-path={cfg.outputs_path!r} not found (looked at {str(path)!r}; relative paths are "
            "read from the shared data folder: data-dir, $FLWR_GCFCP_DATA or ../shared/data next to the checkout)"
        )
    return _load_outputs_cached(str(path))


@lru_cache(maxsize=4)
def _load_outputs_cached(path: str) -> tuple[np.ndarray, np.ndarray]:
    from flwr_gcfcp.app import datasets as data_mod

    probs, labels = data_mod.load_model_outputs(path)
    probs.setflags(write=False)
    labels.setflags(write=False)
    return probs, labels


def outputs_split(cfg: AppConfig, partition_id: int, num_partitions: int) -> dict[str, np.ndarray]:
    """Indices of this node's calibration and test points in the outputs file.

    One random permutation of all points from ``seed`` (``np.random.default_rng(seed).permutation(n)``): the first
    ``n-cal`` (or ``round(calibration-fraction * n)``) calibrate, the rest test, as in ``simulations.mc``'s
    ``classification_draw_fn``. Both parts go to the nodes by TRUE label (``client-classes``, folded onto the
    nodes); labels nobody holds are left out.
    """
    probs, labels = load_outputs(cfg)
    n, n_labels = probs.shape
    if cfg.n_cal > 0:
        if cfg.n_cal >= n:
            raise ValueError(f"run config: n-cal must be < the {n} points of {cfg.outputs_path!r}, got {cfg.n_cal!r}")
        n_cal = int(cfg.n_cal)
    else:
        n_cal = min(max(int(round(cfg.calibration_fraction * n)), 1), n - 1)
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id must be in [0, {num_partitions}), got {partition_id!r}")
    owner = np.full(n_labels, -1, dtype=np.int64)
    for k, labs in enumerate(fold_classes(cfg.class_lists(), num_partitions)):
        for y in labs:
            if not 0 <= y < n_labels:
                raise ValueError(
                    f"run config: client-classes names label {y} but {cfg.outputs_path!r} has {n_labels} classes"
                )
            if owner[y] >= 0 and owner[y] != k:
                raise ValueError(f"run config: client-classes gives label {y} to two clients ({cfg.client_classes!r})")
            owner[y] = k
    perm = np.random.default_rng(int(cfg.seed)).permutation(n)
    cal, test = perm[:n_cal], perm[n_cal:]
    return {
        "cal": cal[owner[labels[cal]] == partition_id],
        "test": test[owner[labels[test]] == partition_id],
    }


# ---------------------------------------------------------------------- §6.1 synthetic regression ("regression")
def regression_model_arrays(cfg: AppConfig):
    """The "given model" of the regression data set: ``f(x) = a + b x`` by least squares on a training sample of
    the client mixture (``simulations.regression``, training seed ``seed + 12345`` as in ``reproduce``)."""
    from flwr.app import Array, ArrayRecord

    from flwr_gcfcp.app.regression import RegressionSetting, fit_linear, sample_mixture

    setting = RegressionSetting()
    xt, yt, _ = sample_mixture(np.random.default_rng(int(cfg.seed) + 12345), setting.n_train, setting.n_clients)
    model = fit_linear(xt, yt)
    return ArrayRecord({"intercept": Array(np.array([model.intercept])), "slope": Array(np.array([model.slope]))})


@lru_cache(maxsize=4)
def _regression_data(seed: int) -> dict[str, np.ndarray]:
    """Calibration data of the K = 4 clients (n_1 = 1000, n_k = 333) and 200 test points of the mixture, drawn from
    ``default_rng(seed)`` in the order of ``simulations.regression.regression_draw_fn`` (same points as its draw)."""
    from flwr_gcfcp.app.regression import RegressionSetting, sample_client, sample_mixture

    setting = RegressionSetting()
    rng = np.random.default_rng(seed)
    xs, ys, cs = [], [], []
    for k in range(setting.n_clients):
        x, y = sample_client(rng, k, setting.n_per_client[k], setting.n_clients)
        xs.append(x)
        ys.append(y)
        cs.append(np.full(x.shape[0], k, dtype=np.int64))
    x_test, y_test, c_test = sample_mixture(rng, setting.n_test, setting.n_clients)
    return {
        "x_cal": np.concatenate(xs), "y_cal": np.concatenate(ys), "c_cal": np.concatenate(cs),
        "x_test": x_test, "y_test": y_test, "c_test": np.asarray(c_test, dtype=np.int64),
    }


def regression_split(cfg: AppConfig, partition_id: int, num_partitions: int) -> dict[str, np.ndarray]:
    """This node's (x, y) calibration and test points: the regression clients listed for it in client-classes
    (``"0;1;2;3"``: node k is the paper's client k + 1); test points go to the client of their mixture component."""
    from flwr_gcfcp.app.regression import RegressionSetting

    n_clients = RegressionSetting().n_clients
    lists = cfg.class_lists()
    bad = sorted({c for labs in lists for c in labs if not 0 <= c < n_clients})
    if bad:
        raise ValueError(
            f"run config: dataset 'regression' has clients 0..{n_clients - 1} (client-classes '0;1;2;3'), "
            f"got {cfg.client_classes!r}"
        )
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id must be in [0, {num_partitions}), got {partition_id!r}")
    mine = fold_classes(lists, num_partitions)[partition_id]
    d = _regression_data(int(cfg.seed))
    cal = np.isin(d["c_cal"], mine)
    test = np.isin(d["c_test"], mine)
    return {"x_cal": d["x_cal"][cal], "y_cal": d["y_cal"][cal], "x_test": d["x_test"][test], "y_test": d["y_test"][test]}


def linear_predict(arrays, x: np.ndarray) -> np.ndarray:
    names = set(arrays.keys())
    if not {"intercept", "slope"} <= names:
        raise ValueError(f"regression model arrays must hold 'intercept' and 'slope', got {sorted(names)}")
    a = float(np.asarray(arrays["intercept"].numpy()).reshape(-1)[0])
    b = float(np.asarray(arrays["slope"].numpy()).reshape(-1)[0])
    return a + b * np.asarray(x, dtype=np.float64)


def n_classes_for(cfg: AppConfig) -> int | None:
    """Number of labels of the configured data; None for stored outputs the server cannot read (the nodes'
    outputs then decide)."""
    if dataset_kind(cfg.dataset) != "outputs":
        return n_classes_of(cfg.dataset)
    try:
        return int(load_outputs(cfg)[0].shape[1])
    except FileNotFoundError:
        return None
