"""Torch plumbing of the bundled app: thread setting, the model of each data set, local training, probabilities."""

from __future__ import annotations

import os
from logging import INFO

import numpy as np
import torch
from flwr.app import ArrayRecord

from flwr_gcfcp.app import models, training
from flwr_gcfcp.app.config import AppConfig
from flwr_gcfcp.app.partitions import DATASETS, _dataset_key


def configure_torch() -> None:
    """One intra-op thread per ClientApp (GCFCP_TORCH_THREADS overrides).

    The model is tiny: on a 2-core machine the default thread pool made a FedAvg round 6x slower (1.3 s vs 0.2 s),
    and Ray/Flower already run several processes side by side.
    """
    n = int(os.environ.get("GCFCP_TORCH_THREADS", "1"))
    if n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def make_model(n_classes: int = 10, seed: int = 0, dataset: str = "digits", model: str = "resnet20-pretrained") -> torch.nn.Module:
    """A seeded SmallCNN (digits), CIFAR ResNet-56 (untrained) or, for cifar10-train, the run config's ``model``
    (``"resnet20-pretrained"``: the ResNet-20 architecture only; its weights come with the global model)."""
    kind = DATASETS[_dataset_key(dataset)]["model"]
    if kind == "config":
        if model == "resnet20-pretrained":
            return models.cifar_resnet(20, n_classes=n_classes)
        return models.make_cifar10_model(model, seed=seed)
    torch.manual_seed(seed)
    if kind == "smallcnn":
        return models.SmallCNN(n_classes=n_classes)
    return models.cifar_resnet(56, n_classes=n_classes)


def initial_model_arrays(cfg: AppConfig, n_classes: int) -> ArrayRecord:
    """The shared pretrained ResNet-56 for cifar10-test-resnet56, the run config's ``model`` for cifar10-train (the
    shared pretrained ResNet-20 of the data folder, or a seeded fresh one), else a seeded fresh model."""
    from flwr_gcfcp.app import datasets as data_mod

    kind = DATASETS[_dataset_key(cfg.dataset)]["model"]
    if kind == "resnet56-pretrained":
        path = data_mod.require_shared(models.PRETRAINED_CIFAR_RESNET_FILES[56], skip=False, data_dir=cfg.data_dir)
        return ArrayRecord(models.load_pretrained_cifar_resnet(path, depth=56).state_dict())
    if kind == "config":
        weights = None
        if cfg.model == "resnet20-pretrained":
            weights = data_mod.require_shared(models.PRETRAINED_CIFAR_RESNET_FILES[20], skip=False, data_dir=cfg.data_dir)
        return ArrayRecord(models.make_cifar10_model(cfg.model, seed=cfg.seed, weights_path=weights).state_dict())
    return ArrayRecord(make_model(n_classes, cfg.seed, cfg.dataset).state_dict())


def load_model(
    arrays: ArrayRecord, n_classes: int = 10, dataset: str = "digits", model: str = "resnet20-pretrained"
) -> torch.nn.Module:
    net = make_model(n_classes, dataset=dataset, model=model)
    net.load_state_dict(arrays.to_torch_state_dict())
    net.eval()
    return net


def train_local(
    model: torch.nn.Module, x: np.ndarray, y: np.ndarray, cfg: AppConfig, server_round: int = 1, partition_id: int = 0
) -> float:
    """Local SGD epochs; the mean training loss (NaN when the trainer reports none).

    cifar10-train trains as ``simulations.cifar10_fedavg`` does: SGD with momentum 0.9 and weight decay 5e-4, random
    crop + flip, and a seed that varies with the round and the partition (``seed * 100003 + round * 101 +
    partition``) but is the same in every run. The other data sets keep plain SGD (momentum 0.9) seeded by ``seed``.
    """
    if DATASETS[_dataset_key(cfg.dataset)]["model"] == "config":
        out = training.train(
            model, x, y, epochs=cfg.local_epochs, lr=cfg.learning_rate, batch_size=cfg.batch_size,
            seed=cfg.seed * 100_003 + int(server_round) * 101 + int(partition_id), momentum=0.9, weight_decay=5e-4,
            augment=True,
        )
    else:
        out = training.train(
            model, x, y, epochs=cfg.local_epochs, lr=cfg.learning_rate, batch_size=cfg.batch_size, seed=cfg.seed
        )
    return float(out) if isinstance(out, (int, float)) else float("nan")


def predict_proba(model: torch.nn.Module, x: np.ndarray, what: str = "images", batch_size: int = 512) -> np.ndarray:
    """Class probabilities (float64) in batches of ``batch_size``; work of more than one batch logs one progress line
    per batch (``scoring test images: 1024/2000``): scoring a ResNet-56 on a CPU takes minutes."""
    from flwr.common import log

    def progress(done: int, total: int) -> None:
        log(INFO, "scoring %s: %d/%d", what, done, total)

    return np.asarray(
        training.predict_proba(model, x, batch_size=batch_size, progress=progress if len(x) > batch_size else None),
        dtype=np.float64,
    )
