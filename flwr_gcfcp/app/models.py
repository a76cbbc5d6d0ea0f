"""Models: a small CNN for the embedded digits run and CIFAR ResNets (option A) that load the shared weights.

The CIFAR ResNets follow He et al. (2016), Sec. 4.2, as implemented in akamaster/pytorch_resnet_cifar10
(BSD-2-Clause): 3 stages of ``n`` basic blocks with 16/32/64 channels, depth ``6n + 2``, and the parameter-free
"option A" shortcut (strided subsampling ``x[:, :, ::2, ::2]`` plus zero-padded channels). Parameter names match
that repository's checkpoints once the ``module.`` prefix is stripped, so they load with ``strict=True``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flwr_gcfcp.app.config import CIFAR10_MODELS as _CONFIG_CIFAR10_MODELS

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "SmallCNN",
    "CifarResNet",
    "cifar_resnet",
    "load_pretrained_cifar_resnet",
    "PRETRAINED_CIFAR_RESNET_FILES",
    "CIFAR10_MODELS",
    "make_cifar10_model",
    "cifar_transform",
    "get_weights",
    "set_weights",
]

#: Input normalisation of akamaster's CIFAR ResNets (ImageNet statistics).
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)

_RESNET_BLOCKS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


# ----------------------------------------------------------------------------------------------
# Small CNN
# ----------------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """A small convolutional classifier, fast on CPU.

    ``conv3x3(in, 16) - ReLU - conv3x3(16, 32) - ReLU - maxpool2 - adaptive avgpool to <= 4x4 - FC(64) - ReLU -
    FC(n_classes)``; about 37k parameters for the 8x8 digits.

    Parameters
    ----------
    n_classes : int, default 10
    in_channels : int, default 1
    image_size : int, default 8
        Height = width of the inputs (>= 4).
    """

    def __init__(self, n_classes: int = 10, in_channels: int = 1, image_size: int = 8) -> None:
        super().__init__()
        checks = (("n_classes", n_classes, 2), ("in_channels", in_channels, 1), ("image_size", image_size, 4))
        for name, value, low in checks:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.n_classes = int(n_classes)
        self.in_channels = int(in_channels)
        self.image_size = int(image_size)
        pooled = min(4, self.image_size // 2)
        self.features = nn.Sequential(
            nn.Conv2d(self.in_channels, 16, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(pooled),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * pooled * pooled, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, self.n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (n, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        return self.classifier(self.features(x))


# ----------------------------------------------------------------------------------------------
# CIFAR ResNet, option A
# ----------------------------------------------------------------------------------------------
class _OptionAShortcut(nn.Module):
    """Parameter-free shortcut: subsample by 2 and zero-pad ``pad`` channels on each side."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = int(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _OptionAShortcut(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet with ``n`` basic blocks per stage (depth ``6n + 2``) and option-A shortcuts.

    Parameters
    ----------
    blocks_per_stage : int
        ``n`` (3, 5, 7, 9 for ResNet-20/32/44/56).
    n_classes : int, default 10
    """

    def __init__(self, blocks_per_stage: int, n_classes: int = 10) -> None:
        super().__init__()
        if isinstance(blocks_per_stage, bool) or not isinstance(blocks_per_stage, int) or blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be an integer >= 1, got {blocks_per_stage!r}")
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        self.depth = 6 * blocks_per_stage + 2
        self.n_classes = n_classes
        self._in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, blocks_per_stage, stride=1)
        self.layer2 = self._make_layer(32, blocks_per_stage, stride=2)
        self.layer3 = self._make_layer(64, blocks_per_stage, stride=2)
        self.linear = nn.Linear(64, n_classes)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(_BasicBlock(self._in_planes, planes, s))
            self._in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x must have shape (n, 3, H, W) (normalised, see cifar_transform), got {tuple(x.shape)}")
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def cifar_resnet(depth: int, n_classes: int = 10) -> CifarResNet:
    """Build a randomly initialised CIFAR ResNet of the given depth.

    Parameters
    ----------
    depth : {20, 32, 44, 56, 110}
    n_classes : int, default 10
    """
    if depth not in _RESNET_BLOCKS:
        raise ValueError(f"depth must be one of {sorted(_RESNET_BLOCKS)}, got {depth!r}")
    return CifarResNet(_RESNET_BLOCKS[depth], n_classes=n_classes)


def load_pretrained_cifar_resnet(path: str | os.PathLike[str], depth: int | None = None) -> CifarResNet:
    """Load an akamaster/pytorch_resnet_cifar10 checkpoint (``resnet{20,32,44,56}-<hash>.th``).

    Reads ``torch.load(f, map_location="cpu", weights_only=True)["state_dict"]``, strips the ``module.`` prefix
    and loads it with ``strict=True``. The model is returned in eval mode; feed it :func:`cifar_transform` inputs.

    Parameters
    ----------
    path : str or path-like
        The checkpoint file (never downloaded).
    depth : int, optional
        Expected depth; inferred from the number of blocks in the checkpoint when omitted.

    Returns
    -------
    CifarResNet
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"path={str(path)!r}: ResNet checkpoint not found (this loader never downloads)")
    ckpt = torch.load(p, map_location="cpu", weights_only=True)
    state = ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt
    if not isinstance(state, dict):
        raise ValueError(f"path={str(path)!r}: expected a state dict (or a dict with 'state_dict'), got {type(state)}")
    state = OrderedDict((k[len("module."):] if k.startswith("module.") else k, v) for k, v in state.items())
    n_blocks = len({k.split(".")[1] for k in state if k.startswith("layer1.")})
    inferred = 6 * n_blocks + 2
    if depth is not None and depth != inferred:
        raise ValueError(f"depth={depth!r} does not match the checkpoint at {str(path)!r} (depth {inferred})")
    if "linear.weight" not in state:
        raise ValueError(f"path={str(path)!r}: no 'linear.weight' in the checkpoint; not a CIFAR ResNet state dict")
    model = CifarResNet(n_blocks, n_classes=int(state["linear.weight"].shape[0]))
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


#: The shared pretrained checkpoints by depth, relative to the shared data folder (``datasets.shared_data_dir()``).
PRETRAINED_CIFAR_RESNET_FILES = {
    20: "weights/resnet20-12fca82f.th",
    32: "weights/resnet32-d509ac18.th",
    44: "weights/resnet44-014dd654.th",
    56: "weights/resnet56-4bfd9763.th",
}
#: Models :func:`make_cifar10_model` builds for federated training on CIFAR-10 images (the run config's ``model``).
CIFAR10_MODELS = _CONFIG_CIFAR10_MODELS


def make_cifar10_model(name: str, seed: int = 0, weights_path: str | os.PathLike[str] | None = None) -> nn.Module:
    """The initial global model of federated training on CIFAR-10 (inputs from :func:`cifar_transform`).

    Parameters
    ----------
    name : {"resnet20-pretrained", "resnet20", "smallcnn"}
        ``"resnet20-pretrained"``: the shared pretrained ResNet-20 (0.27 M parameters), to fine-tune;
        ``"resnet20"``: the same architecture, randomly initialised from ``seed``; ``"smallcnn"``:
        :class:`SmallCNN` for 32x32 RGB (about 0.05 M parameters), randomly initialised from ``seed``.
    seed : int, default 0
        Seeds the random initialisation (unused by the pretrained model).
    weights_path : str or path-like, optional
        Checkpoint of ``"resnet20-pretrained"``; default ``shared_data_dir() / PRETRAINED_CIFAR_RESNET_FILES[20]``.

    Returns
    -------
    torch.nn.Module
        In eval mode.
    """
    if name not in CIFAR10_MODELS:
        raise ValueError(f"model must be one of {CIFAR10_MODELS}, got {name!r}")
    if name == "resnet20-pretrained":
        from flwr_gcfcp.app.datasets import shared_data_dir

        path = Path(weights_path) if weights_path is not None else shared_data_dir() / PRETRAINED_CIFAR_RESNET_FILES[20]
        return load_pretrained_cifar_resnet(path, depth=20)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    torch.manual_seed(int(seed))
    model: nn.Module = cifar_resnet(20) if name == "resnet20" else SmallCNN(n_classes=10, in_channels=3, image_size=32)
    return model.eval()


def cifar_transform(
    images: np.ndarray, mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD
) -> np.ndarray:
    """Turn uint8 HWC images into normalised float32 NCHW inputs.

    Parameters
    ----------
    images : np.ndarray
        uint8, shape ``(n, H, W, 3)`` (or ``(H, W, 3)`` for one image), values 0..255.
    mean, std : sequence of 3 floats
        Per-channel normalisation on the ``[0, 1]`` scale.

    Returns
    -------
    np.ndarray
        float32, shape ``(n, 3, H, W)``: ``(images / 255 - mean) / std``.
    """
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must have shape (n, H, W, 3), got {np.asarray(images).shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0..255), got dtype {x.dtype}")
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    out = x.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray((out - m) / s, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# Weights <-> numpy (Flower ArrayRecord)
# ----------------------------------------------------------------------------------------------
def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Return copies of every ``state_dict`` entry (parameters and buffers) as numpy arrays, in order.

    The list can be wrapped in a Flower ``ArrayRecord`` (``ArrayRecord(get_weights(model))``) and restored with
    :func:`set_weights` (``set_weights(model, record.to_numpy_ndarrays())``).
    """
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, arrays: Sequence[np.ndarray]) -> None:
    """Load arrays produced by :func:`get_weights` (same order, shapes) into ``model`` (strict).

    Parameters
    ----------
    model : torch.nn.Module
    arrays : sequence of np.ndarray
        One array per ``state_dict`` entry, in ``state_dict`` order.
    """
    state = model.state_dict()
    arrays = list(arrays)
    if len(arrays) != len(state):
        raise ValueError(f"arrays must hold {len(state)} arrays (one per state_dict entry), got {len(arrays)}")
    new_state = OrderedDict()
    for (name, ref), arr in zip(state.items(), arrays):
        a = np.asarray(arr)
        if tuple(a.shape) != tuple(ref.shape):
            raise ValueError(f"arrays: entry {name!r} must have shape {tuple(ref.shape)}, got {a.shape}")
        new_state[name] = torch.as_tensor(np.array(a, copy=True)).to(dtype=ref.dtype)
    model.load_state_dict(new_state, strict=True)
