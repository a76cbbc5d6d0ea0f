"""Shared test fixtures (kept small): a private Flower environment and free loopback ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def free_port():
    """Callable returning a currently free TCP port on 127.0.0.1."""
    return _free_port


@pytest.fixture
def flwr_env(tmp_path):
    """Environment for Flower CLI subprocesses: private FLWR_HOME, no dependency install/update check/telemetry,
    and private ports for the local SuperLink that ``flwr run`` starts."""
    home = tmp_path / "flwr_home"
    home.mkdir()
    env = dict(os.environ)
    env.update(
        {
            "FLWR_HOME": str(home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
            "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@pytest.fixture
def restore_torch_threads():
    """The bundled ClientApp pins torch to one thread (process-wide); give other test modules their setting back."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def app_config(tmp_path):
    """Factory of the bundled app's config with results under tmp_path and short timeouts."""
    from flwr_gcfcp.app.config import AppConfig

    def make(sub: str = "results", **overrides):
        base = {"results-dir": str(tmp_path / sub), "num-server-rounds": 1, "calibration-timeout": 5.0}
        return AppConfig.from_mapping({**base, **overrides})

    return make


@pytest.fixture
def bundled_grid():
    """Factory of an in-process grid over the bundled ClientApp: ``bundled_grid(num_nodes, faults=None)``."""
    from flwr_gcfcp.app.client_app import app as client_app
    from flwr_gcfcp.flower.inprocess import InProcessGrid

    def make(num_nodes: int, faults=None) -> InProcessGrid:
        return InProcessGrid(client_app, num_nodes, faults=faults)

    return make
