"""README.md cannot drift from the code: every ```python block and every command of every ```bash block is taken
from the file and run (the `flwr run` and deployment commands in the slow tests); a command that is not run says
why in SKIPPED. The docs it links cannot drift either: every local link resolves, the Python snippets of
docs/results.md run, and every `flwr run` command of docs/*.md has a run config the app accepts."""

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
DOCS = sorted((REPO / "docs").glob("*.md"))
#: Docs whose ```python blocks run as they are (after the embedded default, like the README's).
RUNNABLE_DOCS = (REPO / "docs" / "results.md",)
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


def sections(path: Path = README) -> list[tuple[str, str]]:
    """(heading, body) of every ``##``/``###`` section."""
    parts = re.split(r"^(#{2,4} .*)$", path.read_text(), flags=re.M)
    return [(parts[i].lstrip("#").strip(), parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def python_blocks() -> list[str]:
    return [block for path in (README, *RUNNABLE_DOCS)
            for block in re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)]


def bash_commands(path: Path = README) -> list[tuple[str, str]]:
    """(section heading, command) for every command line of every ```bash block (`&&` parts split)."""
    out = []
    for heading, body in sections(path):
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
    assert len(commands) >= 6  # install + run, install + test, status check, the user app's run
    unclassified = [c for _, c in commands if kind(c) == "unclassified"]
    assert not unclassified, f"README commands this test does not run; add them to SLOW, FAST or SKIPPED: {unclassified}"


def test_every_flwr_run_disables_dependency_installation():
    """Each `flwr run` line works alone on a fresh machine (no earlier SuperLink carries the setting)."""
    for _, command in bash_commands():
        if "flwr run" in command:
            assert command.startswith(ENV_PREFIX + "flwr run"), command


def _links(path: Path) -> list[str]:
    """Targets of the markdown links of ``path`` outside code blocks and code spans."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of the headings of ``path``."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.relative_to(REPO).as_posix())
def test_local_links_resolve(doc):
    """Every link of the README and docs/ to a local path (and heading anchor) exists."""
    broken = []
    for target in _links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{doc.relative_to(REPO)}: broken links {broken}"


def _doc_flwr_runs() -> list[tuple[str, str]]:
    return [(doc.name, c) for doc in [README, *DOCS] for _, c in bash_commands(doc)
            if "flwr run ." in c and ("--run-config" in c or "--federation-config" in c)]


def test_doc_flwr_run_commands_have_valid_run_configs():
    """The `flwr run` commands moved out of the README into docs/ are not run here (CI time); their run configs (a
    preset file or inline keys) must still be accepted by the app, and each works alone on a fresh machine."""
    import shlex

    from flwr.common.config import parse_config_args

    from flwr_gcfcp.app.config import AppConfig

    runs = _doc_flwr_runs()
    assert any(name == "presets.md" for name, _ in runs)
    for name, command in runs:
        assert command.startswith(ENV_PREFIX + "flwr run"), (name, command)
        args = shlex.split(command.replace("$PWD", str(REPO)))
        configs = [args[i + 1] for i, a in enumerate(args) if a == "--run-config"]
        for cfg in configs:
            if cfg.endswith(".toml"):
                assert (REPO / cfg).is_file(), (name, cfg)
            AppConfig.from_mapping(parse_config_args([str(REPO / cfg) if cfg.endswith(".toml") else cfg]))


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
