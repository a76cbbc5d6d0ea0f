"""The bundled app's runs as a newcomer meets them (issue 11): where the shared data is found (also from Flower's
copy of the app), one folder per run with a status a script can check, failures found before training and reported
in one line per cause, and the same results for the same seed and config (in-process, `flwr run`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from flwr_gcfcp.app import datasets as data_mod
from flwr_gcfcp.app import deploy, server_app
from flwr_gcfcp.app import status as run_status
from flwr_gcfcp.app.client_app import app as client_app
from flwr_gcfcp.app.config import AppConfig
from flwr_gcfcp.flower import CalibrationError
from flwr_gcfcp.flower.inprocess import InProcessGrid

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("restore_torch_threads")


# ---------------------------------------------------------------------------------------------- the data folder
def test_data_dir_precedence(monkeypatch, tmp_path):
    """run config data-dir > FLWR_GCFCP_DATA > ../shared/data next to the package's checkout."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.setenv(data_mod.DATA_ENV_VAR, str(tmp_path / "b"))
    assert data_mod.shared_data_dir(str(tmp_path / "a")) == tmp_path / "a"
    assert data_mod.shared_data_dir() == tmp_path / "b"
    monkeypatch.delenv(data_mod.DATA_ENV_VAR)
    monkeypatch.setattr(data_mod, "_installed_source_dir", lambda: None)  # whatever pip recorded on this machine
    assert data_mod.shared_data_dir() == REPO.parent / "shared" / "data"
    with pytest.raises(ValueError, match="data-dir must be an absolute path"):
        AppConfig.from_mapping({"data-dir": "relative/data"})
    (tmp_path / "a" / "weights").mkdir()
    (tmp_path / "a" / "weights" / "w.th").write_bytes(b"x")
    assert data_mod.require_shared("weights/w.th", skip=False, data_dir=str(tmp_path / "a")).is_file()
    with pytest.raises(FileNotFoundError, match="data-dir") as err:
        data_mod.require_shared("weights/none.th", skip=False, data_dir=str(tmp_path / "a"))
    assert str(tmp_path / "a" / "weights" / "none.th") in str(err.value)


def test_data_dir_found_from_a_copied_app(tmp_path):
    """`flwr run` imports the package from its copy under $FLWR_HOME/apps/: the data folder is still the one next to
    the source directory pip recorded for the installed distribution (its direct_url.json)."""
    source = tmp_path / "checkout"
    (tmp_path / "shared" / "data").mkdir(parents=True)
    source.mkdir()
    apps = tmp_path / "flwr_home" / "apps" / "flwr-gcfcp.flwr-gcfcp.0.2.0.abc"
    shutil.copytree(REPO / "flwr_gcfcp", apps / "flwr_gcfcp", ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    dist = site / "flwr_gcfcp-0.2.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: flwr-gcfcp\nVersion: 0.2.0\n")
    (dist / "direct_url.json").write_text(json.dumps({"url": source.as_uri(), "dir_info": {"editable": True}}))
    env = {k: v for k, v in os.environ.items() if k != data_mod.DATA_ENV_VAR}
    env["PYTHONPATH"] = os.pathsep.join([str(apps), str(site)])
    code = (
        "import flwr_gcfcp.app.datasets as d, json; "
        "print(json.dumps([d.__file__, str(d.shared_data_dir()), [str(p) for _, p in d.data_dir_candidates()]]))"
    )
    cwd = tmp_path / "neutral"
    cwd.mkdir()
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    module_file, resolved, candidates = json.loads(out.stdout)
    assert Path(module_file).is_relative_to(apps)  # really imported from the copy
    assert candidates[0] == str(tmp_path / "flwr_home" / "apps" / "shared" / "data")  # the copy's neighbour: absent
    assert resolved == str(tmp_path / "shared" / "data")


# ---------------------------------------------------------------------------------------------- run folders
def _context(run_config: dict) -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)


def test_each_run_has_its_own_folder_and_status(tmp_path, app_config):
    base = tmp_path / "results"
    cfg = app_config(**{"num-server-rounds": 0})
    first = server_app.run(InProcessGrid(client_app, 5), cfg)
    second = server_app.run(InProcessGrid(client_app, 5), app_config(**{"num-server-rounds": 0, "alpha": 0.2}))
    runs = sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink())
    assert len(runs) == 2
    assert Path(first.files["json"]).parent != Path(second.files["json"]).parent
    assert run_status.latest_run(base) == Path(second.files["json"]).parent
    for run, alpha in zip(sorted(runs, key=lambda p: json.loads((p / "run_config.json").read_text())["alpha"]),
                          (0.1, 0.2)):
        assert json.loads((run / "run_config.json").read_text())["alpha"] == alpha
        assert (run / "results.json").is_file() and (run / "predictor_fedcp.json").is_file()
        assert run_status.check(run) == (0, f"ok: {run}: evaluated")
        assert "-digits-" in run.name
    # results.json keeps its keys
    data = json.loads((run_status.latest_run(base) / "results.json").read_text())
    assert {"methods", "excluded_clients", "calibration_clients", "private", "failed_methods", "timings", "config",
            "files", "status"} <= set(data)
    # the check: 0 for the latest (ok) run; 2 with --since in the future
    assert run_status.main([str(base)]) == 0
    assert run_status.check(base, since=time.time() + 60)[0] == 2
    assert run_status.check(tmp_path / "nothing-here")[0] == 2


def test_invalid_config_value_is_a_failed_run(tmp_path):
    base = tmp_path / "results"
    grid = InProcessGrid(client_app, 5)
    with pytest.raises(ValueError, match="alpha must be in"):
        server_app.main(grid, _context({"results-dir": str(base), "alpha": 2.0}))
    code, line = run_status.check(base)
    assert code == 1 and "alpha must be in (0, 1), got 2.0" in line
    # a conformal setting (method name) fails before any training message is sent
    with pytest.raises(ValueError, match="no_such_method"):
        server_app.main(grid, _context({"results-dir": str(base), "methods": "gcfcp,no_such_method"}))
    assert run_status.check(base)[0] == 1 and not grid.sent
    # the command a script runs
    proc = subprocess.run([sys.executable, "-m", "flwr_gcfcp.app.status", str(base)], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 1 and proc.stdout.startswith("failed: ") and "no_such_method" in proc.stdout


def test_unusable_results_dir_fails_before_training(tmp_path, app_config):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    grid = InProcessGrid(client_app, 5)
    with pytest.raises(ValueError, match="results-dir=.*is not usable"):
        server_app.run(grid, app_config(**{"results-dir": str(blocker / "results")}))
    assert not grid.sent  # nothing trained
    with pytest.raises(ValueError, match="results-dir must be an absolute path"):
        AppConfig.from_mapping({"results-dir": "results"})


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("seed", -1, "seed must be >= 0"),
        ("local-epochs", 0, "local-epochs must be >= 1"),
        ("batch-size", 0, "batch-size must be >= 1"),
        ("learning-rate", 0.0, "learning-rate must be a finite number > 0"),
        ("train-timeout", 0.0, "train-timeout must be > 0"),
        ("calibration-timeout", float("inf"), "calibration-timeout must be finite"),
    ],
)
def test_every_config_value_is_checked(key, value, match):
    with pytest.raises(ValueError, match=match):
        AppConfig.from_mapping({key: value})


def test_more_nodes_than_client_classes_fails_before_training(tmp_path, app_config):
    grid = InProcessGrid(client_app, 3)
    with pytest.raises(ValueError, match="client-classes='0-4;5-9' for 3 nodes"):
        server_app.run(grid, app_config(**{"client-classes": "0-4;5-9"}))
    assert not grid.sent
    assert run_status.check(tmp_path / "results")[0] == 1


# ---------------------------------------------------------------------------------------------- one line per cause
def test_missing_client_data_gives_one_line_per_node(tmp_path, app_config, caplog):
    """Stored outputs the nodes cannot find: each node's error is one line (no traceback), the run fails visibly."""
    cfg = app_config(**{"num-server-rounds": 0, "dataset": "outputs", "outputs-path": str(tmp_path / "none.npz")})
    with pytest.raises(CalibrationError) as err, caplog.at_level("INFO", logger="flwr"):
        server_app.run(InProcessGrid(client_app, 5), cfg)
    message = str(err.value)
    assert "Traceback" not in message and "\n" not in message
    assert message.count("FileNotFoundError") == 5 and "outputs-path" in message
    lines = [r.getMessage() for r in caplog.records if "none.npz" in r.getMessage()]
    assert all("\n" not in ln and "Traceback" not in ln for ln in lines)
    assert len(lines) <= 5 + 1  # one per node, plus the run's failure line
    code, line = run_status.check(tmp_path / "results")
    assert code == 1 and "CalibrationError" in line


def test_a_training_round_without_updates_stops_the_run(tmp_path, app_config):
    grid = InProcessGrid(client_app, 5, faults={i: {"train": "error"} for i in range(5)})
    with pytest.raises(server_app.TrainingError, match="training round 1: no node returned an update; 5 node"):
        server_app.run(grid, app_config(**{"num-server-rounds": 25}))
    assert sum(m.metadata.message_type == "train" for m in grid.sent) == 5  # round 1 only, not 25


def test_app_handler_errors_are_one_line(tmp_path, app_config):
    """An exception in the bundled ClientApp's train handler becomes a one-line error reply (code 2)."""
    cfg = app_config(**{"client-classes": "0,1;2,3"})  # 3 nodes, 2 label sets: node 2 cannot load its data
    grid = InProcessGrid(client_app, 3)
    content = RecordDict({"arrays": server_app.initial_arrays(cfg), "config": ConfigRecord(cfg.client_config())})
    msg = grid.create_message(content, "train", grid.node_ids[2], "1")
    reply = client_app(msg, grid.contexts[grid.node_ids[2]])
    assert reply.has_error() and reply.error.code == 2
    assert "\n" not in reply.error.reason and "num-partitions (3) exceeds" in reply.error.reason
    assert reply.error.reason.startswith("flwr-gcfcp app: ValueError: ") and ".py:" in reply.error.reason


# ---------------------------------------------------------------------------------------------- reproducibility
def comparable(run_dir: Path) -> dict:
    """results.json without what legitimately differs between runs: timings, paths, node ids (random under
    Flower), the results folder."""
    data = json.loads((run_dir / "results.json").read_text())
    for key in ("timings", "files", "evaluation_clients"):
        data.pop(key)
    data["config"].pop("results-dir")
    for m in data["methods"].values():
        m.pop("fit_ms")
        m.pop("clients")  # node ids
    for key in ("calibration_clients", "excluded_clients", "evaluation_excluded_clients"):
        data[key] = sorted(
            (json.dumps({k: v for k, v in c.items() if k not in ("client", "node_id")}, sort_keys=True)
             for c in data[key])
        )
    return data


class ShuffledGrid(InProcessGrid):
    """Replies in reverse order (as they might arrive from Ray or a SuperLink)."""

    def send_and_receive(self, messages, *, timeout=None):
        return list(reversed(list(super().send_and_receive(messages, timeout=timeout))))


def test_same_seed_same_results(tmp_path, app_config):
    """Two runs of the embedded default (2 rounds), the second with other node ids and replies in reverse order:
    the same model bit for bit and the same results.json (timings and node ids aside)."""
    cfg = app_config(**{"num-server-rounds": 2})
    a = server_app.run(InProcessGrid(client_app, 5), cfg)
    b = server_app.run(ShuffledGrid(client_app, 5, node_id_offset=777000), cfg)
    dir_a, dir_b = Path(a.files["json"]).parent, Path(b.files["json"]).parent
    assert dir_a != dir_b
    with np.load(dir_a / "model.npz") as ma, np.load(dir_b / "model.npz") as mb:
        assert sorted(ma.files) == sorted(mb.files)
        for k in ma.files:
            assert ma[k].tobytes() == mb[k].tobytes(), k
    assert comparable(dir_a) == comparable(dir_b)
    for name in a.calibrators:
        assert (dir_a / f"predictor_{name}.json").read_text() == (dir_b / f"predictor_{name}.json").read_text()


# ---------------------------------------------------------------------------------------------- through `flwr run`
def _flwr(env: dict, cwd: Path, run_config: str, extra: list[str] | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "flwr"
    cmd = [str(exe) if exe.exists() else "flwr", "run", str(REPO), "--federation-config",
           "num-supernodes=5 client-resources-num-cpus=2", "--run-config", run_config, "--stream", *(extra or [])]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_flwr_run_data_folder_status_and_reproducibility(tmp_path, flwr_env):
    """Through `flwr run` (apps run from Flower's copy under FLWR_HOME/apps, no FLWR_GCFCP_DATA): a preset reading
    the shared data folder works; an invalid value makes `flwr run` exit 0 but the status check exit 1; two runs of
    the default (2 rounds) on the already running SuperLink give the same results, equal to the in-process run."""
    env = {k: v for k, v in flwr_env.items() if k != data_mod.DATA_ENV_VAR}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    base = tmp_path / "results"
    try:
        if (data_mod.shared_data_dir() / "logits" / "cifar10_resnet56_test_logits.npz").is_file():
            conf = tmp_path / "cifar10.toml"  # the preset plus results-dir (a toml cannot be mixed with key=value)
            conf.write_text((REPO / "simulations" / "conf" / "cifar10.toml").read_text() + f"\nresults-dir = '{base}'\n")
            proc = _flwr(env, cwd, str(conf))
            assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
            assert run_status.check(base, wait=60)[0] == 0, (proc.stdout + proc.stderr)[-3000:]
            assert "-outputs-" in run_status.latest_run(base).name
        proc = _flwr(env, cwd, f"results-dir='{base}' alpha=2.0")
        assert proc.returncode == 0  # Flower's own exit status does not tell
        code, line = run_status.check(base, wait=60)
        assert code == 1 and "alpha must be in (0, 1)" in line, line
        runs = []
        for _ in range(2):
            proc = _flwr(env, cwd, f"results-dir='{base}' num-server-rounds=2")
            assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
            assert run_status.check(base, wait=60)[0] == 0, (proc.stdout + proc.stderr)[-3000:]
            runs.append(run_status.latest_run(base))
    finally:
        deploy.stop_pid_trees(deploy.pids_with_arg(flwr_env["FLWR_HOME"]))
    assert runs[0] != runs[1]
    assert comparable(runs[0]) == comparable(runs[1])
    inproc = server_app.run(
        InProcessGrid(client_app, 5), AppConfig.from_mapping({"results-dir": str(tmp_path / "inproc"),
                                                             "num-server-rounds": 2})
    )
    assert comparable(Path(inproc.files["json"]).parent) == comparable(runs[0])


def test_long_scoring_logs_progress(caplog):
    """Scoring more than one batch logs one line per batch, and gives the same probabilities as one call."""
    from flwr_gcfcp.app import torch_model, training

    model = torch_model.make_model(10)
    x = np.random.default_rng(0).random((1100, 1, 8, 8), dtype=np.float32)
    with caplog.at_level("INFO", logger="flwr"):
        probs = torch_model.predict_proba(model, x, "test images of partition 3")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("scoring ")]
    assert lines == [f"scoring test images of partition 3: {k}/1100" for k in (512, 1024, 1100)]
    assert np.array_equal(probs, training.predict_proba(model, x))


def test_no_evaluation_counts_is_a_failed_run(tmp_path, app_config):
    """Thresholds are kept, but a run that measured no coverage is reported as failed to a script."""
    from flwr_gcfcp.flower.protocol import EVALUATE_MESSAGE_TYPE

    grid = InProcessGrid(client_app, 5, faults={i: {EVALUATE_MESSAGE_TYPE: "error"} for i in range(5)})
    report = server_app.run(grid, app_config(**{"num-server-rounds": 0}))
    run = Path(report.files["json"]).parent
    assert (run / "predictor_fedcp.json").is_file()
    code, line = run_status.check(tmp_path / "results")
    assert code == 1 and "no node returned valid evaluation counts" in line


def test_bad_accuracy_counts_from_a_node_are_ignored_not_crashing():
    """Training replies' test counts are a node's claim: only integers with 0 <= correct <= total are summed."""
    from flwr_gcfcp.app.server_app import _test_counts

    assert _test_counts(3, 5, 1, "round 1") == (3, 5)
    assert _test_counts(None, None, 1, "round 1") is None
    for correct, total in [(6, 5), (-1, 5), (2.0, 5), (float("nan"), 5), (True, 5), (3, None)]:
        assert _test_counts(correct, total, 1, "round 1") is None
