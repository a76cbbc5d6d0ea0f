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


def make_model(n_classes: int = 10, seed: int = 0, dataset: str = "digits") -> torch.nn.Module:
    """A seeded SmallCNN (digits) or CIFAR ResNet-56 (untrained) for ``dataset``."""
    torch.manual_seed(seed)
    if DATASETS[_dataset_key(dataset)]["model"] == "smallcnn":
        return models.SmallCNN(n_classes=n_classes)
    return models.cifar_resnet(56, n_classes=n_classes)


def initial_model_arrays(cfg: AppConfig, n_classes: int) -> ArrayRecord:
    """The shared pretrained ResNet-56 for cifar10-test-resnet56, else a seeded fresh model."""
    if DATASETS[_dataset_key(cfg.dataset)]["model"] == "resnet56-pretrained":
        from flwr_gcfcp.app import datasets as data_mod

        path = data_mod.require_shared("weights/resnet56-4bfd9763.th", skip=False, data_dir=cfg.data_dir)
        return ArrayRecord(models.load_pretrained_cifar_resnet(path, depth=56).state_dict())
    return ArrayRecord(make_model(n_classes, cfg.seed, cfg.dataset).state_dict())


def load_model(arrays: ArrayRecord, n_classes: int = 10, dataset: str = "digits") -> torch.nn.Module:
    model = make_model(n_classes, dataset=dataset)
    model.load_state_dict(arrays.to_torch_state_dict())
    model.eval()
    return model


def train_local(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, cfg: AppConfig) -> float:
    """Local SGD epochs; the mean training loss (NaN when the trainer reports none)."""
    out = training.train(
        model, x, y, epochs=cfg.local_epochs, lr=cfg.learning_rate, batch_size=cfg.batch_size, seed=cfg.seed
    )
    return float(out) if isinstance(out, (int, float)) else float("nan")


def predict_proba(model: torch.nn.Module, x: np.ndarray, what: str = "images", batch_size: int = 512) -> np.ndarray:
    """Class probabilities (float64) in batches of ``batch_size``; work of more than one batch logs one progress line
    per batch (``scoring test images: 1024/2000``): scoring a ResNet-56 on a CPU takes minutes."""
    import scipy.special
    from flwr.common import log

    n = len(x)
    if n <= batch_size:
        return np.asarray(training.predict_proba(model, x, batch_size=batch_size), dtype=np.float64)
    logits = []
    for start in range(0, n, batch_size):
        logits.append(training.predict_logits(model, x[start : start + batch_size], batch_size=batch_size))
        log(INFO, "scoring %s: %d/%d", what, min(start + batch_size, n), n)
    return scipy.special.softmax(np.concatenate(logits).astype(np.float64), axis=1)
