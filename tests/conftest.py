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
