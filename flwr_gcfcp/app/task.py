"""Glue between the Flower apps and the library: run-config parsing, client data, model, scores.

Kept thin on purpose: data loading/partitioning lives in ``data.py``, the model and its training loop in
``models.py`` / ``training.py``, every conformal computation in the core (``calibrators.py``, ``metrics.py``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

# Every knob of ``[tool.flwr.app.config]`` (kebab-case) with its default. The ServerApp forwards the effective
# values to the clients in every message's ConfigRecord, so clients also work when their run_config is empty
# (``flwr.simulation.run_simulation``) or stale.
DEFAULTS: dict[str, Any] = {
    "dataset": "digits",
    "outputs-path": "",
    "n-cal": 0,
    "client-classes": "0,1;2,3;4,5;6,7;8,9",
    "calibration-fraction": 0.25,
    "test-fraction": 0.25,
    "seed": 0,
    "num-server-rounds": 25,
    "local-epochs": 1,
    "learning-rate": 0.02,
    "batch-size": 16,
    "alpha": 0.1,
    "deltas": "250",
    "methods": "split_cp,fedcp,gcfcp",
    "groups": "0-3;2-5;4-7;6-9",
    "score": "softmax",
    "mixture-weights": "",
    "conservative": False,
    "calibration-timeout": 120.0,
    "min-calibration-clients": 2,
    "train-timeout": 600.0,
    "results-dir": "",
    "plot": True,
}

# Knobs the clients need (sent in every ConfigRecord under these keys).
CLIENT_KEYS = (
    "dataset",
    "outputs-path",
    "n-cal",
    "client-classes",
    "calibration-fraction",
    "test-fraction",
    "seed",
    "num-server-rounds",  # validated on the clients too (data sets without training need 0)
    "local-epochs",
    "learning-rate",
    "batch-size",
    "alpha",
    "deltas",
    "methods",
    "groups",
    "score",
    "mixture-weights",
    "conservative",
)


@dataclass(frozen=True)
class AppConfig:
    """Typed view of the run config (kebab-case keys -> snake_case fields)."""

    dataset: str = "digits"
    outputs_path: str = ""
    n_cal: int = 0
    client_classes: str = "0,1;2,3;4,5;6,7;8,9"
    calibration_fraction: float = 0.25
    test_fraction: float = 0.25
    seed: int = 0
    num_server_rounds: int = 25
    local_epochs: int = 1
    learning_rate: float = 0.02
    batch_size: int = 16
    alpha: float = 0.1
    deltas: str = "250"
    methods: str = "split_cp,fedcp,gcfcp"
    groups: str = "0-3;2-5;4-7;6-9"
    score: str = "softmax"
    mixture_weights: str = ""
    conservative: bool = False
    calibration_timeout: float = 120.0
    min_calibration_clients: int = 2
    train_timeout: float = 600.0
    results_dir: str = ""
    plot: bool = True

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_mapping(cls, *configs: Mapping[str, Any] | None) -> "AppConfig":
        """Merge run-config style mappings (later ones win); unknown keys raise ValueError naming them."""
        merged: dict[str, Any] = dict(DEFAULTS)
        for cfg in configs:
            if not cfg:
                continue
            for key, value in dict(cfg).items():
                if key in ("server-round",):  # injected by Flower strategies
                    continue
                if key not in DEFAULTS:
                    raise ValueError(f"run config: unknown key {key!r} (value {value!r}); known: {sorted(DEFAULTS)}")
                merged[key] = value
        kwargs = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            kwargs[f.name] = _coerce(key, merged[key], type(DEFAULTS[key]))
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"run config: alpha must be in (0, 1), got {self.alpha!r}")
        if self.num_server_rounds < 0:
            raise ValueError(f"run config: num-server-rounds must be >= 0, got {self.num_server_rounds!r}")
        if self.min_calibration_clients < 1:
            raise ValueError(
                f"run config: min-calibration-clients must be >= 1, got {self.min_calibration_clients!r}"
            )
        if self.calibration_timeout <= 0:
            raise ValueError(f"run config: calibration-timeout must be > 0, got {self.calibration_timeout!r}")
        for frac_name in ("calibration_fraction", "test_fraction"):
            v = getattr(self, frac_name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"run config: {frac_name.replace('_', '-')} must be in (0, 1), got {v!r}")
        kind = dataset_kind(self.dataset)
        if kind == "model" and self.calibration_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "run config: calibration-fraction + test-fraction must be < 1 (the rest trains), got "
                f"{self.calibration_fraction!r} + {self.test_fraction!r}"
            )
        if kind != "model" and self.num_server_rounds != 0:
            raise ValueError(
                f"run config: dataset {self.dataset!r} calibrates a given model ("
                + ("stored model outputs" if kind == "outputs" else "the fitted linear model")
                + f"); there is nothing to train, so num-server-rounds must be 0, got {self.num_server_rounds!r}"
            )
        if kind == "outputs" and not str(self.outputs_path).strip():
            raise ValueError(
                "run config: dataset 'outputs' needs outputs-path (an npz with 'labels' and one of 'logits', "
                "'probs', 'log_probs'; relative paths are read from the shared data folder), got ''"
            )
        if self.n_cal < 0:
            raise ValueError(f"run config: n-cal must be >= 0 (0 = use calibration-fraction), got {self.n_cal!r}")
        is_interval = str(self.groups).strip().lower().startswith("interval:")
        if kind == "regression" and not is_interval:
            raise ValueError(
                f"run config: dataset 'regression' has groups on its covariate x: use interval groups such as "
                f"'interval:0-2;1-3;2-4;3-5', got {self.groups!r}"
            )
        if kind != "regression" and is_interval:
            raise ValueError(
                f"run config: interval groups ({self.groups!r}) need a scalar covariate; dataset {self.dataset!r} "
                "has class probabilities: use label-set groups ('0-3;2-5') or confidence groups ('confidence:4')"
            )
        is_residual = str(self.score).strip().lower() == "residual"
        if kind == "regression" and not is_residual:
            raise ValueError(
                f"run config: dataset 'regression' uses the score |y - f(x)|: set score = 'residual', got {self.score!r}"
            )
        if kind != "regression" and is_residual:
            raise ValueError(
                f"run config: score 'residual' is for dataset 'regression', not {self.dataset!r} "
                "(classification scores: softmax, lac, aps, raps)"
            )
        self.delta_list()
        self.method_list()
        self.class_lists()
        if self.results_dir and not os.path.isabs(self.results_dir):
            raise ValueError(f"run config: results-dir must be an absolute path (or ''), got {self.results_dir!r}")

    # ------------------------------------------------------------------ derived values
    def to_run_config(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    def client_config(self) -> dict[str, Any]:
        """The knobs the clients need, as ConfigRecord-safe python scalars."""
        rc = self.to_run_config()
        return {k: rc[k] for k in CLIENT_KEYS}

    def delta_list(self) -> list[float]:
        text = str(self.deltas).strip()
        if not text:
            return [250.0]
        try:
            out = [float(t) for t in text.split(",") if t.strip()]
        except ValueError as exc:
            raise ValueError(f"run config: deltas must be comma-separated numbers, got {self.deltas!r}") from exc
        if not out or any(not np.isfinite(d) or d <= 0 for d in out):
            raise ValueError(f"run config: deltas must be positive numbers, got {self.deltas!r}")
        return out

    def method_list(self) -> list[str]:
        out = [m.strip() for m in str(self.methods).split(",") if m.strip()]
        if not out:
            raise ValueError(f"run config: methods must name at least one method, got {self.methods!r}")
        return out

    def class_lists(self) -> list[list[int]]:
        try:
            out = [_parse_labels(part) for part in str(self.client_classes).split(";")]
        except ValueError as exc:
            raise ValueError(
                f"run config: client-classes must look like '0,1;2,3' or '0-4;5-9', got {self.client_classes!r}"
            ) from exc
        if not out or any(not part for part in out):
            raise ValueError(f"run config: client-classes must look like '0,1;2,3' or '0-4;5-9', got {self.client_classes!r}")
        return out

    def mixture_weight_list(self, n_clients: int) -> list[float] | None:
        text = str(self.mixture_weights).strip()
        if not text:
            return None
        try:
            w = [float(t) for t in text.split(",")]
        except ValueError as exc:
            raise ValueError(f"run config: mixture-weights must be numbers, got {self.mixture_weights!r}") from exc
        if len(w) != n_clients or any(not np.isfinite(x) or x <= 0 for x in w):
            raise ValueError(
                f"run config: mixture-weights needs {n_clients} positive numbers (one per partition), "
                f"got {self.mixture_weights!r}"
            )
        return w

    def pi_for(self, partition_id: int, n_clients: int) -> float:
        """π_k of one partition, normalised over all ``n_clients`` partitions (uniform when unset)."""
        w = self.mixture_weight_list(n_clients)
        if w is None:
            return 1.0 / n_clients
        return w[partition_id] / sum(w)

    def results_path(self) -> Path:
        return Path(self.results_dir) if self.results_dir else Path.cwd() / "results"


def _parse_labels(text: str) -> list[int]:
    """'0,1,5' or '0-3' or '0-2,7' -> sorted labels."""
    out: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "-" in item:
            lo, hi = (int(t) for t in item.split("-", 1))
            if hi < lo:
                raise ValueError(item)
            out.extend(range(lo, hi + 1))
        else:
            out.append(int(item))
    return out


def _coerce(key: str, value: Any, typ: type) -> Any:
    try:
        if typ is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off", ""):
                    return False
                raise ValueError(value)
            return bool(value)
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if typ is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run config: {key} must be {typ.__name__}, got {value!r}") from exc


# ---------------------------------------------------------------------- client data
@dataclass
class ClientData:
    """One client's local splits (images float32 (n, 1, H, W), labels int64)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_cal: np.ndarray
    y_cal: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int


def load_client_data(cfg: AppConfig, partition_id: int, num_partitions: int) -> ClientData:
    """Partition the dataset with flwr-datasets (via ``data.py``) and split train / calibration / test."""
    return _load_client_data_cached(
        cfg.dataset,
        cfg.client_classes,
        float(cfg.calibration_fraction),
        float(cfg.test_fraction),
        int(cfg.seed),
        int(partition_id),
        int(num_partitions),
    )


@lru_cache(maxsize=16)
def _load_client_data_cached(
    dataset: str,
    client_classes: str,
    calibration_fraction: float,
    test_fraction: float,
    seed: int,
    partition_id: int,
    num_partitions: int,
) -> ClientData:
    from flwr_gcfcp.app import datasets as data_mod

    cfg = AppConfig.from_mapping({"dataset": dataset, "client-classes": client_classes})
    classes = fold_classes(cfg.class_lists(), num_partitions)
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id must be in [0, {num_partitions}), got {partition_id!r}")
    ds = _load_dataset(data_mod, dataset)
    n_classes = DATASETS[_dataset_key(dataset)]["n_classes"]
    part = data_mod.partition_by_client_classes(ds, classes, seed=seed)[partition_id]
    # test split first, then calibration out of the rest (fractions are of the whole partition)
    rest, test = data_mod.split_train_calibration(part, test_fraction, seed=seed)
    train, cal = data_mod.split_train_calibration(rest, calibration_fraction / (1.0 - test_fraction), seed=seed + 1)
    prep = DATASETS[_dataset_key(dataset)]["inputs"]
    x_tr, y_tr = data_mod.dataset_to_numpy(train)
    x_ca, y_ca = data_mod.dataset_to_numpy(cal)
    x_te, y_te = data_mod.dataset_to_numpy(test)
    x_tr, x_ca, x_te = prep(x_tr), prep(x_ca), prep(x_te)
    return ClientData(x_tr, y_tr, x_ca, y_ca, x_te, y_te, n_classes)


def fold_classes(classes: list[list[int]], num_partitions: int) -> list[list[int]]:
    """Label sets per node. With fewer nodes than ``client-classes`` entries, node i holds entries i, i+N, ...

    (``flwr run .`` simulates 2 SuperNodes unless ``--federation-config "num-supernodes=5"`` is given.)
    """
    if num_partitions < 1:
        raise ValueError(f"num-partitions must be >= 1, got {num_partitions!r}")
    if num_partitions > len(classes):
        raise ValueError(
            f"num-partitions ({num_partitions}) exceeds the number of client-classes entries ({len(classes)}); "
            "give one label set per node in client-classes"
        )
    if num_partitions == len(classes):
        return classes
    return [sorted(c for j in range(i, len(classes), num_partitions) for c in classes[j]) for i in range(num_partitions)]


def _identity(x):
    return x


def _cifar_inputs(x):
    from flwr_gcfcp.app.models import cifar_transform

    if not len(x):
        return np.zeros((0, 3, 32, 32), dtype=np.float32)
    x = np.asarray(x)
    if x.dtype != np.uint8:  # datasets' numpy formatter may widen the stored uint8 pixels
        if x.min() < 0 or x.max() > 255:
            raise ValueError(f"CIFAR pixels must lie in 0..255, got range [{x.min()}, {x.max()}]")
        x = x.astype(np.uint8)
    return cifar_transform(x)


def _digits_dataset(data_mod):
    return data_mod.load_digits_dataset()


def _cifar10_test_dataset(data_mod):
    images, labels = data_mod.load_cifar10_npz(data_mod.require_shared("cifar10/cifar10_test_jpeg_q75.npz", skip=False))
    return data_mod.arrays_to_dataset(images, labels, n_classes=10)  # uint8 HWC; normalised per client


# Data sets the Flower app can run on, by kind:
# - "model": images scored by a torch model the federation holds. "digits" is embedded (scikit-learn, trained with
#   FedAvg); "cifar10-test-resnet56" calibrates the pretrained CIFAR ResNet-56 of the shared data folder
#   (../shared/data or $FLWR_GCFCP_DATA) on the CIFAR-10 test images (num-server-rounds=0: the "existing model" path).
# - "outputs": bring-your-own model outputs: an npz with ``labels`` and one of ``logits``/``probs``/``log_probs``
#   (``outputs-path``); the stored probabilities are the model's predictions (no training).
# - "regression": the paper's §6.1 synthetic regression (simulations/regression.py) with its linear model.
DATASETS: dict[str, dict[str, Any]] = {
    "digits": {"kind": "model", "load": _digits_dataset, "n_classes": 10, "inputs": _identity, "model": "smallcnn"},
    "cifar10-test-resnet56": {
        "kind": "model",
        "load": _cifar10_test_dataset,
        "n_classes": 10,
        "inputs": _cifar_inputs,
        "model": "resnet56-pretrained",
    },
    "outputs": {"kind": "outputs", "n_classes": None},
    "regression": {"kind": "regression", "n_classes": 1},
}


def _dataset_key(dataset: str) -> str:
    key = str(dataset).strip().lower()
    if key not in DATASETS:
        raise ValueError(
            f"run config: dataset {dataset!r} is not supported by the Flower app (supported: {sorted(DATASETS)}); "
            "for other model outputs use dataset='outputs' with outputs-path='file.npz'"
        )
    return key


def dataset_kind(dataset: str) -> str:
    """``"model"`` (a torch model scores images), ``"outputs"`` (stored model outputs) or ``"regression"``."""
    return str(DATASETS[_dataset_key(dataset)]["kind"])


def n_classes_of(dataset: str) -> int:
    n = DATASETS[_dataset_key(dataset)]["n_classes"]
    if n is None:
        raise ValueError(f"dataset {dataset!r}: the number of classes comes from the data (use n_classes_for(cfg))")
    return int(n)


def n_classes_for(cfg: AppConfig) -> int:
    """Number of labels of the configured data (for outputs: the npz's columns, read at the server when it can)."""
    if dataset_kind(cfg.dataset) != "outputs":
        return n_classes_of(cfg.dataset)
    try:
        return int(load_outputs(cfg)[0].shape[1])
    except FileNotFoundError:  # a server without the clients' file: the labels named in client-classes
        return max(max(c) for c in cfg.class_lists()) + 1


def set_size_label(cfg: AppConfig) -> str:
    """What the evaluation round's "set size" measures: label count, or 2·threshold for regression intervals."""
    return "interval length" if dataset_kind(cfg.dataset) == "regression" else "set size"


# ---------------------------------------------------------------------- stored model outputs ("outputs")
def resolve_outputs_path(path: str) -> Path:
    """``outputs-path``: absolute as given; relative to the shared data folder (``$FLWR_GCFCP_DATA``)."""
    from flwr_gcfcp.app import datasets as data_mod

    p = Path(str(path).strip()).expanduser()
    return p if p.is_absolute() else data_mod.shared_data_dir() / p


def load_outputs(cfg: AppConfig) -> tuple[np.ndarray, np.ndarray]:
    """(probs (n, L) float64, labels (n,) int64) of ``outputs-path`` (``data.load_model_outputs``)."""
    path = resolve_outputs_path(cfg.outputs_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"run config: outputs-path={cfg.outputs_path!r} not found (looked at {str(path)!r}; relative paths are "
            "read from the shared data folder, ../shared/data or $FLWR_GCFCP_DATA)"
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


def _linear_predict(arrays, x: np.ndarray) -> np.ndarray:
    names = set(arrays.keys())
    if not {"intercept", "slope"} <= names:
        raise ValueError(f"regression model arrays must hold 'intercept' and 'slope', got {sorted(names)}")
    a = float(np.asarray(arrays["intercept"].numpy()).reshape(-1)[0])
    b = float(np.asarray(arrays["slope"].numpy()).reshape(-1)[0])
    return a + b * np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------------- what a node scores
@dataclass
class LocalScores:
    """One node's data under the global model, for a conformal round.

    ``scores``: calibration scores (n,) (calibration split) or the score matrix (n, L) of every candidate label
    (test split; one column ``|y - f(x)|`` for regression, with ``labels`` all 0). ``features``: what the groups
    read (probabilities for label-set / confidence groups, the covariate for interval groups). ``probs``: the
    probability rows (classification; None for regression), for the class-conditional / set-valued methods.
    """

    scores: np.ndarray
    labels: np.ndarray
    features: np.ndarray
    n_classes: int
    accuracy: float | None
    probs: np.ndarray | None = None


def local_scores(arrays, cfg: AppConfig, partition_id: int, num_partitions: int, split: str) -> LocalScores:
    """Score this node's calibration (``split="cal"``) or test (``"test"``) data with the global ``arrays``."""
    if split not in ("cal", "test"):
        raise ValueError(f"split must be 'cal' or 'test', got {split!r}")
    kind = dataset_kind(cfg.dataset)
    groups_text = cfg.groups
    if kind == "regression":
        d = regression_split(cfg, partition_id, num_partitions)
        x, y = d[f"x_{split}"], d[f"y_{split}"]
        from flwr_gcfcp.core.scores import absolute_residual

        residual = absolute_residual(y, _linear_predict(arrays, x)) if len(y) else np.zeros(0)
        features = group_features(make_groups(cfg, 1), probs=None, covariate=x, what=groups_text)
        scores = residual if split == "cal" else residual[:, None]
        return LocalScores(scores, np.zeros(len(y), dtype=np.int64), features, 1, None)
    if kind == "outputs":
        all_probs, all_labels = load_outputs(cfg)
        idx = outputs_split(cfg, partition_id, num_partitions)[split]
        probs, labels = np.asarray(all_probs[idx]), np.asarray(all_labels[idx])
        n_classes = int(all_probs.shape[1])
    else:
        configure_torch()
        data = load_client_data(cfg, partition_id, num_partitions)
        model = load_model(arrays, data.n_classes, cfg.dataset)
        x, labels = (data.x_cal, data.y_cal) if split == "cal" else (data.x_test, data.y_test)
        probs = predict_proba(model, x)
        n_classes = data.n_classes
    score = score_fn(cfg)
    rng = score_rng(cfg, partition_id, split)
    scores = score.calibration_scores(probs, labels, rng=rng) if split == "cal" else score.score_matrix(probs, rng=rng)
    features = group_features(make_groups(cfg, n_classes), probs=probs, covariate=None, what=groups_text)
    acc = float(np.mean(probs.argmax(axis=1) == labels)) if len(labels) else float("nan")
    return LocalScores(scores, labels, features, n_classes, acc, np.asarray(probs, dtype=np.float64))


def group_features(groups, probs=None, covariate=None, what: str = "") -> np.ndarray:
    """The features a group family reads: the covariate for interval groups, else the probability rows
    (label-set groups take their argmax, confidence groups their maximum)."""
    from flwr_gcfcp.core.groups import ConfidenceGroups, IntervalGroups

    if isinstance(groups, IntervalGroups) and not isinstance(groups, ConfidenceGroups):
        if covariate is None:
            raise ValueError(
                f"run config: groups {what!r} are intervals of a scalar covariate, which this data set does not "
                "have; use label-set groups ('0-3;2-5') or confidence groups ('confidence:4')"
            )
        return np.asarray(covariate, dtype=np.float64)
    if probs is None:
        raise ValueError(
            f"run config: groups {what!r} are defined on class probabilities, but dataset 'regression' has only "
            "the covariate x; use interval groups ('interval:0-2;1-3;2-4;3-5')"
        )
    return probs


def evaluation_counts(cfg: AppConfig, local: LocalScores, thresholds: np.ndarray, membership: np.ndarray) -> dict:
    """``metrics.evaluation_counts`` of the sets ``{y : s(x, y) <= threshold}``; for regression the one-column score
    matrix gives coverage ``|y - f(x)| <= threshold`` and the size sums are interval lengths ``2·threshold``."""
    from flwr_gcfcp.core.metrics import evaluation_counts as _counts

    thr = np.asarray(thresholds, dtype=np.float64)
    out = _counts(local.scores <= thr[:, None], local.labels, membership)
    if dataset_kind(cfg.dataset) == "regression":
        length = 2.0 * thr
        member = np.asarray(membership, dtype=bool)
        out["size_sum"] = np.array([length.sum()], dtype=np.float64)
        out["group_size_sum"] = np.array([length[member[:, g]].sum() for g in range(member.shape[1])], np.float64)
    return out


@lru_cache(maxsize=2)
def _load_dataset(data_mod, dataset: str):
    return DATASETS[_dataset_key(dataset)]["load"](data_mod)


# ---------------------------------------------------------------------- model
def configure_torch() -> None:
    """One intra-op thread per ClientApp (GCFCP_TORCH_THREADS overrides).

    The model is tiny: on a 2-core machine the default thread pool made a FedAvg round 6x slower (1.3 s vs 0.2 s),
    and Ray/Flower already run several processes side by side.
    """
    import torch

    n = int(os.environ.get("GCFCP_TORCH_THREADS", "1"))
    if n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def make_model(n_classes: int = 10, seed: int = 0, dataset: str = "digits"):
    import torch

    from flwr_gcfcp.app import models

    torch.manual_seed(seed)
    kind = DATASETS[_dataset_key(dataset)]["model"]
    if kind == "smallcnn":
        return models.SmallCNN(n_classes=n_classes)
    return models.cifar_resnet(56, n_classes=n_classes)


def initial_arrays(cfg: AppConfig, n_classes: int | None = None):
    """Initial global model: a seeded SmallCNN, the shared pretrained ResNet-56 for cifar10-test-resnet56, the
    fitted linear model for regression, nothing (an empty record) for stored outputs."""
    from flwr.app import ArrayRecord

    kind = dataset_kind(cfg.dataset)
    if kind == "outputs":  # the stored outputs are the model: nothing to send
        return ArrayRecord()
    if kind == "regression":
        return regression_model_arrays(cfg)
    n_classes = n_classes_of(cfg.dataset) if n_classes is None else n_classes
    if DATASETS[_dataset_key(cfg.dataset)]["model"] == "resnet56-pretrained":
        from flwr_gcfcp.app import datasets as data_mod
        from flwr_gcfcp.app.models import load_pretrained_cifar_resnet

        path = data_mod.require_shared("weights/resnet56-4bfd9763.th", skip=False)
        return ArrayRecord(load_pretrained_cifar_resnet(path, depth=56).state_dict())
    return ArrayRecord(make_model(n_classes, cfg.seed, cfg.dataset).state_dict())


def load_model(arrays, n_classes: int = 10, dataset: str = "digits"):
    model = make_model(n_classes, dataset=dataset)
    model.load_state_dict(arrays.to_torch_state_dict())
    model.eval()
    return model


def train_local(model, x, y, cfg: AppConfig) -> float:
    from flwr_gcfcp.app import training

    out = training.train(
        model, x, y, epochs=cfg.local_epochs, lr=cfg.learning_rate, batch_size=cfg.batch_size, seed=cfg.seed
    )
    return float(out) if isinstance(out, (int, float)) else float("nan")


def predict_proba(model, x) -> np.ndarray:
    from flwr_gcfcp.app import training

    return np.asarray(training.predict_proba(model, x), dtype=np.float64)


# ---------------------------------------------------------------------- conformal glue
def make_groups(cfg: AppConfig, n_classes: int):
    from flwr_gcfcp.core.groups import parse_groups

    return parse_groups(cfg.groups, n_labels=n_classes)


def make_calibrators(cfg: AppConfig, n_classes: int):
    from flwr_gcfcp.methods import make_calibrators as _make

    return _make(
        cfg.method_list(),
        make_groups(cfg, n_classes),
        cfg.alpha,
        deltas=tuple(cfg.delta_list()),
        conservative=cfg.conservative,
        n_classes=n_classes,
    )


def score_fn(cfg: AppConfig):
    from flwr_gcfcp.core.scores import make_score

    return make_score(cfg.score)


def score_rng(cfg: AppConfig, partition_id: int, which: str) -> np.random.Generator:
    """Client-side randomness: ``"cal"`` / ``"test"`` randomized scores, ``"split"`` the clustered-CP split."""
    return np.random.default_rng([int(cfg.seed), int(partition_id), {"cal": 1, "test": 2, "split": 3}[which]])
