"""Training and prediction loops (torch, CPU by default).

All functions take numpy arrays (or tensors): inputs ``x`` of shape ``(n, C, H, W)`` already in the model's input
scale (use :func:`flwr_gcfcp.app.models.cifar_transform` for uint8 CIFAR images) and integer labels ``y``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.special
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["set_torch_threads", "train", "predict_proba", "predict_logits", "evaluate"]

_OPTIMIZERS = ("sgd", "adam")


def set_torch_threads(num_threads: int | None) -> None:
    """Set torch's intra-op thread count (``None`` leaves it unchanged).

    On a 2-core machine running several Flower clients in one process, ``1`` avoids oversubscription.
    """
    if num_threads is None:
        return
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) or num_threads < 1:
        raise ValueError(f"num_threads must be an integer >= 1 or None, got {num_threads!r}")
    if torch.get_num_threads() != int(num_threads):
        torch.set_num_threads(int(num_threads))


def _as_inputs(x: np.ndarray | torch.Tensor, name: str = "x") -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim < 2:
        raise ValueError(f"{name} must have shape (n, ...), got {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        raise ValueError(f"{name} is uint8; convert images to float inputs first (e.g. models.cifar_transform)")
    return t.to(torch.float32)


def _as_labels(y: np.ndarray | torch.Tensor, n: int, name: str = "y") -> torch.Tensor:
    a = np.asarray(y.cpu().numpy() if isinstance(y, torch.Tensor) else y)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match x, got {a.shape}")
    if n and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, got dtype {a.dtype}")
    if n and a.min() < 0:
        raise ValueError(f"{name} must be non-negative class indices, got min {a.min()}")
    return torch.as_tensor(a.astype(np.int64))


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def train(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int = 32,
    seed: int = 0,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    num_threads: int | None = None,
    device: str | torch.device = "cpu",
    augment: bool = False,
) -> float:
    """Train ``model`` in place with mini-batch cross-entropy; deterministic for a given ``seed`` on CPU.

    Parameters
    ----------
    model : torch.nn.Module
    x : array, shape (n, ...)
        Float inputs.
    y : array of int, shape (n,)
    epochs : int
        Passes over the data (>= 1).
    lr : float
        Learning rate (> 0).
    batch_size : int, default 32
    seed : int, default 0
        Seeds ``torch.manual_seed`` and the batch order.
    optimizer : {"sgd", "adam"}, default "sgd"
        SGD uses ``momentum``.
    momentum, weight_decay : float
    num_threads : int, optional
        Passed to :func:`set_torch_threads`.
    device : str or torch.device, default "cpu"
    augment : bool, default False
        The standard CIFAR augmentation per batch: random crop of the image zero-padded by 4 pixels (on the
        normalised inputs) and random horizontal flip, drawn from ``seed``.

    Returns
    -------
    float
        Mean per-example training loss over all epochs.
    """
    epochs = _check_positive_int(epochs, "epochs")
    batch_size = _check_positive_int(batch_size, "batch_size")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite float > 0, got {lr!r}")
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {optimizer!r}")
    set_torch_threads(num_threads)
    xt = _as_inputs(x)
    yt = _as_labels(y, len(xt))
    n = len(xt)
    if n == 0:
        raise ValueError("x must hold at least one example, got 0")

    torch.manual_seed(int(seed))
    rng = np.random.default_rng(int(seed))
    model.to(device)
    model.train()
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    total, count = 0.0, 0
    for epoch in range(epochs):
        order = torch.as_tensor(rng.permutation(n))
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            xb, yb = xt[idx], yt[idx]
            if augment:
                xb = _augment(xb, rng)
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training diverged: loss {float(loss.detach())} in epoch {epoch + 1}, batch at example {start}; "
                    f"lower lr={lr!r}"
                )
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
    model.eval()
    return total / count


def _augment(xb: torch.Tensor, rng: np.random.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop of the zero-padded images and random horizontal flip (one draw per image)."""
    n, _, h, w = xb.shape
    padded = F.pad(xb, (pad, pad, pad, pad))
    dy = rng.integers(0, 2 * pad + 1, size=n)
    dx = rng.integers(0, 2 * pad + 1, size=n)
    flip = rng.random(n) < 0.5
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    if flip.any():
        out[torch.as_tensor(flip)] = out[torch.as_tensor(flip)].flip(-1)
    return out


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    batch_size: int = 512,
    num_threads: int | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Return the model's logits as float64, shape ``(n, L)``, in eval mode.

    ``progress(done, total)``, when given, is called after every batch with the number of examples scored so far
    (e.g. to log long client scoring).
    """
    batch_size = _check_positive_int(batch_size, "batch_size")
    set_torch_threads(num_threads)
    xt = _as_inputs(x)
    model.to(device)
    model.eval()
    outs = []
    for s in range(0, len(xt), batch_size):
        outs.append(model(xt[s : s + batch_size].to(device)).double().cpu())
        if progress is not None:
            progress(min(s + batch_size, len(xt)), len(xt))
    if not outs:
        raise ValueError("x must hold at least one example, got 0")
    return torch.cat(outs).numpy()


def predict_proba(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    batch_size: int = 512,
    num_threads: int | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Return class probabilities, float64 of shape ``(n, L)``, rows summing to 1.

    The softmax is taken in float64 on the float64-cast logits (max-subtracted); ``progress`` as in
    :func:`predict_logits`.
    """
    logits = predict_logits(
        model, x, batch_size=batch_size, num_threads=num_threads, device=device, progress=progress
    )
    return scipy.special.softmax(np.asarray(logits, dtype=np.float64), axis=1)


def evaluate(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    batch_size: int = 512,
    num_threads: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """Return ``(mean cross-entropy loss, accuracy)`` of ``model`` on ``(x, y)``."""
    logits = predict_logits(model, x, batch_size=batch_size, num_threads=num_threads, device=device)
    yt = _as_labels(y, len(logits))
    if yt.max().item() >= logits.shape[1]:
        raise ValueError(f"y must lie in [0, {logits.shape[1]}), got max {yt.max().item()}")
    loss = float(F.cross_entropy(torch.as_tensor(logits), yt).item())
    acc = float((logits.argmax(axis=1) == yt.numpy()).mean())
    return loss, acc
