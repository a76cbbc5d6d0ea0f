"""The bundled app's data sets and how the nodes split them (train / calibration / test per partition).

Data sets by kind: ``"model"`` (images scored by a torch model the federation holds: the embedded ``digits``, the
shared CIFAR-10 training JPEGs (``cifar10-train``), or the pretrained CIFAR ResNet-56 on the shared CIFAR-10 test
images), ``"outputs"`` (stored model outputs, see
:mod:`.outputs`) and ``"regression"`` (the paper's §6.1 data, see :mod:`.outputs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from flwr_gcfcp.app.config import AppConfig


@dataclass
class ClientData:
    """One client's local splits (images float32 (n, C, H, W), labels int64)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_cal: np.ndarray
    y_cal: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int


def load_client_data(cfg: AppConfig, partition_id: int, num_partitions: int) -> ClientData:
    """Partition the dataset with flwr-datasets (via ``data.py``) and split train / calibration / test."""
    if _dataset_key(cfg.dataset) == "cifar10-train":
        return _cifar10_train_client_data(
            cfg.client_classes,
            int(cfg.images_per_client),
            int(cfg.heldout_per_client),
            float(cfg.calibration_fraction),
            int(cfg.seed),
            int(partition_id),
            int(num_partitions),
            cfg.data_dir,
        )
    return _load_client_data_cached(
        cfg.dataset,
        cfg.client_classes,
        float(cfg.calibration_fraction),
        float(cfg.test_fraction),
        int(cfg.seed),
        int(partition_id),
        int(num_partitions),
        cfg.data_dir,
    )


@lru_cache(maxsize=4)
def _cifar10_train_client_data(
    client_classes: str,
    images_per_client: int,
    heldout_per_client: int,
    calibration_fraction: float,
    seed: int,
    partition_id: int,
    num_partitions: int,
    data_dir: str,
) -> ClientData:
    """One client of ``cifar10-train``: the first ``images-per-client`` training JPEGs of its label partition
    (flwr-datasets), and held-out CIFAR-10 test images of its classes, ``calibration-fraction`` of them calibrating
    (:func:`~flwr_gcfcp.app.datasets.cifar10_train_client_splits`, as ``simulations.cifar10_fedavg`` uses it)."""
    from flwr_gcfcp.app import datasets as data_mod

    cfg = AppConfig.from_mapping({"client-classes": client_classes})
    classes = fold_classes(cfg.class_lists(), num_partitions)
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id must be in [0, {num_partitions}), got {partition_id!r}")
    (split,) = data_mod.cifar10_train_client_splits(
        classes,
        images_per_client,
        calibration_fraction=calibration_fraction,
        heldout_per_client=heldout_per_client,
        seed=seed,
        train_path=data_mod.require_shared(data_mod.CIFAR10_TRAIN_FILE, skip=False, data_dir=data_dir),
        test_path=data_mod.require_shared(data_mod.CIFAR10_TEST_FILE, skip=False, data_dir=data_dir),
        partition_ids=[partition_id],
    )
    return ClientData(
        _cifar_inputs(split.x_train), split.y_train, _cifar_inputs(split.x_cal), split.y_cal,
        _cifar_inputs(split.x_test), split.y_test, 10,
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
    data_dir: str = "",
) -> ClientData:
    from flwr_gcfcp.app import datasets as data_mod

    cfg = AppConfig.from_mapping({"dataset": dataset, "client-classes": client_classes})
    classes = fold_classes(cfg.class_lists(), num_partitions)
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id must be in [0, {num_partitions}), got {partition_id!r}")
    ds = _load_dataset(data_mod, dataset, data_dir)
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


def _digits_dataset(data_mod, data_dir: str):
    return data_mod.load_digits_dataset()


def _cifar10_test_dataset(data_mod, data_dir: str):
    path = data_mod.require_shared("cifar10/cifar10_test_jpeg_q75.npz", skip=False, data_dir=data_dir)
    images, labels = data_mod.load_cifar10_npz(path)
    return data_mod.arrays_to_dataset(images, labels, n_classes=10)  # uint8 HWC; normalised per client


# Data sets the Flower app can run on, by kind:
# - "model": images scored by a torch model the federation holds. "digits" is embedded (scikit-learn, trained with
#   FedAvg); "cifar10-train" trains the run config's ``model`` with FedAvg on the shared CIFAR-10 training JPEGs
#   and calibrates on held-out CIFAR-10 test images; "cifar10-test-resnet56" calibrates the pretrained CIFAR ResNet-56 of the shared data folder
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
    # federated training on the shared CIFAR-10 training JPEGs (loaded per client by _cifar10_train_client_data);
    # the run config's ``model`` is the initial model
    "cifar10-train": {"kind": "model", "n_classes": 10, "inputs": _cifar_inputs, "model": "config"},
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
        raise ValueError(f"dataset {dataset!r}: the number of classes comes from the data (use outputs.n_classes_for(cfg))")
    return int(n)


@lru_cache(maxsize=2)
def _load_dataset(data_mod, dataset: str, data_dir: str = ""):
    """The whole data set (``data_dir``: the run config's ``data-dir``, for data sets of the shared folder)."""
    return DATASETS[_dataset_key(dataset)]["load"](data_mod, data_dir)


