"""The layout's import rules, checked in fresh interpreters: core and methods import neither flwr nor torch, the
Flower integration imports no torch, and the library never imports ``simulations``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _loaded(module: str) -> set[str]:
    code = (
        f"import sys, {module}\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("flwr_gcfcp", {"flwr", "torch", "torchvision", "simulations"}),
        ("flwr_gcfcp.core", {"flwr", "torch", "torchvision", "simulations"}),
        ("flwr_gcfcp.methods", {"flwr", "torch", "torchvision", "simulations"}),
        ("flwr_gcfcp.flower", {"torch", "torchvision", "simulations"}),
        ("flwr_gcfcp.flower.server", {"torch", "torchvision", "simulations"}),
        ("flwr_gcfcp.flower.client", {"torch", "torchvision", "simulations"}),
        ("strategies", {"torch", "torchvision", "simulations"}),
    ],
)
def test_module_does_not_import(module, forbidden):
    loaded = _loaded(module)
    assert not loaded & forbidden, f"{module} imports {sorted(loaded & forbidden)}"


def test_the_check_sees_imports():
    """The check above can fail: the bundled app's torch glue does import torch."""
    assert "torch" in _loaded("flwr_gcfcp.app.torch_model")
