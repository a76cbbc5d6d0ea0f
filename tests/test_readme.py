"""README.md cannot drift from the code: every ```python block and every command of every ```bash block is taken
from the file and run (the `flwr run` and deployment commands in the slow tests); a command that is not run says
why in SKIPPED."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flwr_gcfcp.app import deploy
from flwr_gcfcp.app import status as run_status

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
ENV_PREFIX = "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 "

#: Commands (or parts of `a && b` commands) that are not run, with the reason.
SKIPPED = {
    "pip install": "installs the package; the tests run in that installation already",
    "python -m pytest": "runs the test suite this test belongs to",
}
#: Commands that are run in the slow tests (each with a private FLWR_HOME, so a fresh SuperLink).
SLOW = (ENV_PREFIX + "flwr run .", "python -m flwr_gcfcp.app.deploy")
#: Commands that are run in the fast test, in a folder holding the results of an in-process run.
FAST = ("python -m flwr_gcfcp.app.status",)

pytestmark = pytest.mark.usefixtures("restore_torch_threads")


def sections() -> list[tuple[str, str]]:
    """(heading, body) of every ``##``/``###`` section."""
    parts = re.split(r"^(#{2,4} .*)$", README.read_text(), flags=re.M)
    return [(parts[i].lstrip("#").strip(), parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def bash_commands() -> list[tuple[str, str]]:
    """(section heading, command) for every command line of every ```bash block (`&&` parts split)."""
    out = []
    for heading, body in sections():
        for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    out.extend((heading, part.strip()) for part in line.split(" && "))
    return out


def kind(command: str) -> str:
    if any(command.startswith(p) for p in SKIPPED):
        return "skipped"
    if any(command.startswith(p) for p in SLOW):
        return "slow"
    if any(command.startswith(p) for p in FAST):
        return "fast"
    return "unclassified"


def test_every_command_is_run_or_skipped_with_a_reason():
    commands = bash_commands()
    assert len(commands) >= 10
    unclassified = [c for _, c in commands if kind(c) == "unclassified"]
    assert not unclassified, f"README commands this test does not run; add them to SLOW, FAST or SKIPPED: {unclassified}"


def test_every_flwr_run_disables_dependency_installation():
    """Each `flwr run` line works alone on a fresh machine (no earlier SuperLink carries the setting)."""
    for _, command in bash_commands():
        if "flwr run" in command:
            assert command.startswith(ENV_PREFIX + "flwr run"), command


@pytest.fixture(scope="module")
def results_folder(tmp_path_factory):
    """A folder with `results/` of one in-process run of the embedded default (1 round), as the README's Python
    snippets and status check expect after the first command."""
    from flwr_gcfcp.app import server_app
    from flwr_gcfcp.app.client_app import app as client_app
    from flwr_gcfcp.app.config import AppConfig
    from flwr_gcfcp.flower.inprocess import InProcessGrid

    import torch

    n = torch.get_num_threads()
    cwd = tmp_path_factory.mktemp("readme")
    server_app.run(InProcessGrid(client_app, 5), AppConfig.from_mapping(
        {"results-dir": str(cwd / "results"), "num-server-rounds": 1}))
    torch.set_num_threads(n)
    return cwd


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_python_block_runs(index, results_folder):
    code = python_blocks()[index]
    proc = subprocess.run([sys.executable, "-c", code], cwd=results_folder, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"README python block {index}:\n{code}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("command", [c for _, c in bash_commands() if kind(c) == "fast"])
def test_fast_command_runs(command, results_folder):
    proc = subprocess.run(["bash", "-c", command], cwd=results_folder, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


def _user_app(tmp_path: Path) -> Path:
    """The README's user app ("Add calibration to your own Flower app"), written from its blocks."""
    body = dict(sections())["Add calibration to your own Flower app"]
    app = tmp_path / "userapp"
    for block in re.findall(r"```(?:python|toml)\n(.*?)```", body, flags=re.S):
        first, _, rest = block.partition("\n")
        path = app / first.removeprefix("# ").strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rest)
    (app / "userapp" / "__init__.py").write_text("")
    return app


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("where_command", [wc for wc in bash_commands() if kind(wc[1]) == "slow"],
                         ids=lambda wc: wc[1][len(ENV_PREFIX):80] if wc[1].startswith(ENV_PREFIX) else wc[1][:80])
def test_slow_command_runs_verbatim(where_command, tmp_path, flwr_env):
    """Each command alone, verbatim, with a fresh SuperLink (private FLWR_HOME); `flwr run .` from the repository
    (the user app's from its own folder), the deployment helper from a scratch folder; then the run's status."""
    heading, command = where_command
    env = {**flwr_env, "PYTHONPATH": str(REPO)}
    if "Add calibration to your own Flower app" in heading:
        cwd = _user_app(tmp_path)
    elif command.startswith("python -m flwr_gcfcp.app.deploy"):
        cwd = tmp_path
    else:
        cwd = REPO
    t0 = time.time()
    try:
        proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=1100)
    finally:
        deploy.stop_pid_trees(deploy.pids_with_arg(flwr_env["FLWR_HOME"]))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    if cwd.name == "userapp":  # the user's app writes results.json itself (run_conformal_rounds)
        assert (cwd / "results" / "results.json").is_file(), log[-4000:]
        return
    results = cwd / ("results-deploy" if "deploy" in command else "results")
    code, line = run_status.check(results, since=t0 - 1, wait=30)
    assert code == 0, line + "\n" + log[-4000:]
