"""End-to-end runs through Flower's engines: Ray simulation, `flwr run .`, and the loopback deployment engine.

Also checks that the thresholds of a Flower run equal those the core computes in-process on the same split, seed
and final model.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flwr_gcfcp.app import deploy
from flwr_gcfcp.app.config import AppConfig
from flwr_gcfcp.app.status import latest_run

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("restore_torch_threads")


def _exe(name: str) -> str:
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else (shutil.which(name) or name)


def core_thresholds(cfg: AppConfig, state: dict, num_partitions: int) -> dict[str, dict[str, object]]:
    """Calibrate in-process with the core on the same partitions, seed and model weights as the Flower run."""
    import torch

    from flwr_gcfcp import make_score, parse_groups
    from flwr_gcfcp.app import torch_model
    from flwr_gcfcp.app.partitions import load_client_data
    from flwr_gcfcp.flower.client import client_rng
    from flwr_gcfcp.methods import client_payload, fit_all, make_calibrators

    def cals():
        return make_calibrators(cfg.methods.split(","), parse_groups(cfg.groups, n_labels=10), cfg.alpha, [250.0])

    torch_model.configure_torch()  # the ClientApps score with one thread, as here
    model = torch_model.make_model(10)
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()})
    payloads, pi = {}, {}
    for p in range(num_partitions):
        data = load_client_data(cfg, p, num_partitions)
        probs = torch_model.predict_proba(model, data.x_cal)
        scores = make_score(cfg.score).calibration_scores(probs, data.y_cal, rng=client_rng(cfg.seed, p, "cal"))
        payloads[str(p)] = client_payload(cals(), scores, probs, pi_k=1.0 / num_partitions, n_clients=num_partitions)
        pi[str(p)] = 1.0 / num_partitions
    report = fit_all(cals(), payloads, pi=pi)
    assert not report.excluded
    return {name: cal.predictor()["thresholds"] for name, cal in report.calibrators.items()}


def check_results(out: Path, cfg: AppConfig, num_partitions: int, n_excluded: int = 0) -> dict:
    out = latest_run(out)  # the run's own folder under results-dir
    assert json.loads((out / "status.json").read_text())["status"] == "ok"
    data = json.loads((out / "results.json").read_text())
    assert set(data["methods"]) == {"split_cp", "fedcp", "gcfcp_delta250"}
    for m in data["methods"].values():
        assert 0.5 < m["marginal_coverage"] <= 1.0
        assert len(m["group_coverage"]) == 4 and len(m["group_set_size"]) == 4
    assert len(data["excluded_clients"]) == n_excluded
    assert data["private"] == {"split_cp": False, "fedcp": True, "gcfcp_delta250": True}
    assert (out / "coverage.png").is_file() and (out / "results.md").is_file()
    # thresholds of the Flower run == the core's, in-process, on the same data and final model
    state = dict(np.load(out / "model.npz"))
    expected = core_thresholds(cfg, state, num_partitions)
    for name, thr in expected.items():
        saved = json.loads((out / f"predictor_{name}.json").read_text())["thresholds"]
        assert saved == thr, name
    return data


def test_inprocess_thresholds_equal_core(tmp_path):
    """Fast version of the equality check (in-process grid, one FedAvg round)."""
    from flwr_gcfcp.app import server_app
    from flwr_gcfcp.app.client_app import app as client_app
    from flwr_gcfcp.flower.inprocess import InProcessGrid

    cfg = AppConfig.from_mapping({"results-dir": str(tmp_path / "res"), "num-server-rounds": 1})
    server_app.run(InProcessGrid(client_app, 5), cfg)
    check_results(tmp_path / "res", cfg, 5)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ray_simulation_default(tmp_path):
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from flwr_gcfcp.app import server_app
    from flwr_gcfcp.app.client_app import app as client_app

    # run_simulation gives both apps an empty run_config: the ServerApp gets its config from a closure and
    # forwards every client knob in the messages.
    cfg = AppConfig.from_mapping({"results-dir": str(tmp_path / "res"), "num-server-rounds": 3})
    sapp = ServerApp()

    @sapp.main()
    def _main(grid, context):
        server_app.run(grid, cfg)

    run_simulation(
        server_app=sapp,
        client_app=client_app,
        num_supernodes=5,
        backend_config={"client_resources": {"num_cpus": 2, "num_gpus": 0.0}},
    )
    check_results(tmp_path / "res", cfg, 5)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_flwr_run_end_to_end(tmp_path, flwr_env):
    """`flwr run .` (local simulation SuperLink on private ports, neutral cwd, private FLWR_HOME)."""
    out = tmp_path / "results"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cmd = [
        _exe("flwr"), "run", str(REPO),
        "--federation-config", "num-supernodes=5 client-resources-num-cpus=2",
        "--run-config", f"results-dir='{out}' num-server-rounds=5",
        "--stream",
    ]
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=flwr_env, capture_output=True, text=True, timeout=300)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-3000:]
        assert (latest_run(out) / "results.json").is_file(), log[-3000:]
        assert "gcfcp_delta250" in log and "| method |" in log  # the table is in the run's log
    finally:
        # `flwr run` leaves its local SuperLink running: stop it (and its SuperExec) by PID
        deploy.stop_pid_trees(deploy.pids_with_arg(flwr_env["FLWR_HOME"]))
    assert not deploy.pids_with_arg(flwr_env["FLWR_HOME"])
    cfg = AppConfig.from_mapping({"results-dir": str(out), "num-server-rounds": 5})
    check_results(out, cfg, 5)


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_deployment_engine_two_supernodes(tmp_path, free_port):
    out = tmp_path / "results"
    port = free_port()
    cmd = [
        sys.executable, "-m", "flwr_gcfcp.app.deploy", "--num-supernodes", "2", "--results-dir", str(out),
        "--superlink-port", str(port), "--run-config", "num-server-rounds=1", "--timeout", "400",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=460)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "stopped 4 process group(s)" in log
    # every process it started is gone (nothing still names the SuperLink's address)
    alive = [p for p in deploy.pids_with_arg(f"127.0.0.1:{port}") if deploy._alive(p)]
    assert not alive, alive
    cfg = AppConfig.from_mapping(
        {"results-dir": str(out), "num-server-rounds": 1, "client-classes": deploy.default_client_classes(2)}
    )
    check_results(out, cfg, 2)


def readme_user_app() -> dict[str, str]:
    """The files of README's "Add calibration to your own Flower app": each code block whose first line is
    ``# <path>``."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Add calibration to your own Flower app", 1)[1].split("\n## ", 1)[0]
    files = {}
    for block in re.findall(r"```(?:python|toml)\n(.*?)```", section, flags=re.S):
        first, _, body = block.partition("\n")
        files[first.removeprefix("# ").strip()] = body
    return files


def test_readme_user_app_is_complete():
    files = readme_user_app()
    assert set(files) == {"userapp/client_app.py", "userapp/server_app.py", "pyproject.toml"}
    client, server = files["userapp/client_app.py"], files["userapp/server_app.py"]
    assert "register_conformal_handlers(app, model_outputs)" in client and "@app.train()" in client
    assert "run_conformal_rounds(" in server and "FedAvg(" in server


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_user_app_with_flwr_run(tmp_path, flwr_env):
    """A user's own Flower app (README) plus the two calls, run with `flwr run` on 5 simulated nodes: results.json has
    gcfcp_delta250 and fedcp, with the thresholds of the core's in-process fit on the same split and final model."""
    app_dir = tmp_path / "userapp"
    for rel, body in readme_user_app().items():
        (app_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (app_dir / rel).write_text(body)
    (app_dir / "userapp" / "__init__.py").write_text("")
    out = tmp_path / "results"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**flwr_env, "PYTHONPATH": str(REPO)}  # this checkout's flwr_gcfcp in the SuperLink and its apps
    cmd = [
        _exe("flwr"), "run", str(app_dir),
        "--federation-config", "num-supernodes=5 client-resources-num-cpus=2",
        "--run-config", f"results-dir='{out}'",
        "--stream",
    ]
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-3000:]
        assert (out / "results.json").is_file(), log[-3000:]
    finally:
        deploy.stop_pid_trees(deploy.pids_with_arg(flwr_env["FLWR_HOME"]))
    data = json.loads((out / "results.json").read_text())
    assert set(data["methods"]) == {"gcfcp_delta250", "fedcp"} and data["status"] == "evaluated"
    assert not data["excluded_clients"] and len(data["calibration_clients"]) == 5

    # the core, in-process: the user's own data and the final model the run calibrated
    from scipy.special import softmax

    from flwr.app import Context, RecordDict

    from flwr_gcfcp import make_score, parse_groups
    from flwr_gcfcp.methods import client_payload, fit_all, make_calibrators

    namespace: dict = {}
    exec(readme_user_app()["userapp/client_app.py"].split("\n@app.train()", 1)[0], namespace)  # imports + load_data
    w = np.load(out / "model.npz")["w"]

    def cals():
        return make_calibrators(["gcfcp", "fedcp"], parse_groups("0-3;2-5;4-7;6-9"), 0.1, [250.0])

    payloads = {}
    for k in range(5):
        ctx = Context(run_id=0, node_id=k, node_config={"partition-id": k}, state=RecordDict(), run_config={})
        x, y = namespace["load_data"](ctx, "calibration")
        probs = softmax(x @ w, axis=1)
        payloads[str(k)] = client_payload(cals(), make_score("softmax").calibration_scores(probs, y), probs, 0.2, 5)
    core = fit_all(cals(), payloads, pi={str(k): 0.2 for k in range(5)})
    for name, cal in core.calibrators.items():
        saved = json.loads((out / f"predictor_{name}.json").read_text())["thresholds"]
        assert saved == cal.predictor()["thresholds"], name
