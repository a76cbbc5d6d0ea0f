"""The simulation presets (simulations/conf/*.toml) through the real ClientApp and strategy on an in-process Grid.

Bring-your-own model outputs (``dataset = "outputs"``), confidence groups on the probability rows, and the §6.1
regression with interval sets. Each checks that the thresholds of the Flower run equal the core's in-process
computation (``calibrators.client_payload`` per client + ``calibrators.fit_all``) on the same split, built here
with the simulations' own split code (``simulations.mc.classification_draw_fn``,
``simulations.regression.regression_draw_fn``), and that the results have the per-group entries.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from flwr_gcfcp.app.status import latest_run
from flwr_gcfcp.app import datasets as data_mod
from flwr_gcfcp.app import outputs, partitions, server_app
from flwr_gcfcp.app.config import AppConfig
from flwr_gcfcp.methods import client_payload, fit_all, make_calibrators
from flwr_gcfcp.app.client_app import app as client_app
from flwr_gcfcp.core.groups import parse_groups
from flwr_gcfcp.core.scores import make_score
from flwr_gcfcp.flower.inprocess import InProcessGrid

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "simulations" / "conf"

pytestmark = pytest.mark.usefixtures("restore_torch_threads")


def _write_outputs(path: Path, n: int = 900, n_classes: int = 6, seed: int = 3, kind: str = "logits") -> None:
    """A small model-output npz in the shared files' format: ``labels`` + ``logits`` / ``probs`` / ``log_probs``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=n)
    logits = rng.normal(size=(n, n_classes)) * 1.5
    logits[np.arange(n), labels] += rng.uniform(0.0, 4.0, size=n)  # a model that is right most of the time
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "logits":
        np.savez(path, logits=logits.astype(np.float32), labels=labels.astype(np.int64))
    else:
        z = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        arr = probs if kind == "probs" else np.log(probs)
        np.savez(path, **{kind: arr, "labels": labels.astype(np.int64)})


def _core_thresholds(cfg: AppConfig, scores, features, client, n_clients: int, n_classes: int) -> dict:
    """The federated computation in one process: each client's payload, then fit_all (π uniform)."""
    groups = parse_groups(cfg.groups, n_labels=n_classes)

    def cals():
        return make_calibrators(cfg.methods.split(","), groups, cfg.alpha, [float(d) for d in cfg.deltas.split(",")], cfg.conservative)

    payloads = {}
    for k in range(n_clients):
        m = client == k
        payloads[str(k)] = client_payload(cals(), scores[m], features[m], pi_k=1.0 / n_clients, n_clients=n_clients)
    report = fit_all(cals(), payloads, pi={str(k): 1.0 / n_clients for k in range(n_clients)})
    assert not report.excluded and not report.failed_methods
    return {name: cal.thresholds for name, cal in report.calibrators.items()}


def _outputs_core(cfg: AppConfig, path: Path, n_clients: int) -> dict:
    from simulations.mc import classification_draw_fn, parse_client_classes

    probs, labels = data_mod.load_model_outputs(path)
    _, owner = parse_client_classes(cfg.client_classes, probs.shape[1])
    smat = make_score(cfg.score).score_matrix(probs)
    draw = classification_draw_fn(smat, labels, probs, owner, cfg.n_cal, n_clients)(np.random.default_rng(cfg.seed))
    return _core_thresholds(cfg, draw.cal_scores, draw.cal_features, draw.cal_client, n_clients, probs.shape[1])


def _check_report(result, n_groups: int, out: Path) -> dict:
    out = latest_run(out)  # the run's own folder under results-dir
    data = json.loads((out / "results.json").read_text())
    assert set(data["methods"]) == set(result.results["methods"])
    for name, m in data["methods"].items():
        assert 0.0 <= m["marginal_coverage"] <= 1.0, name
        assert len(m["group_coverage"]) == n_groups and len(m["group_set_size"]) == n_groups, name
    assert not data["excluded_clients"]
    assert (out / "results.md").is_file()
    return data


def _assert_same_thresholds(result, expected: dict) -> None:
    assert set(result.calibrators) == set(expected)
    for name, thr in expected.items():
        assert result.calibrators[name].thresholds == thr, name


# ---------------------------------------------------------------------- bring-your-own model outputs
def test_outputs_dataset_thresholds_equal_core(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_GCFCP_DATA", str(tmp_path / "shared"))
    path = tmp_path / "shared" / "mine" / "outputs.npz"
    _write_outputs(path, kind="logits")
    cfg = AppConfig.from_mapping(
        {
            "dataset": "outputs",
            "outputs-path": "mine/outputs.npz",  # relative: read from the shared data folder
            "n-cal": 450,
            "client-classes": "0,1;2,3;4,5",
            "num-server-rounds": 0,
            "groups": "0-2;2-4;4-5",
            "methods": "split_cp,fedcp,condcp,centralized_gcfcp,gcfcp",
            "deltas": "50,500",
            "seed": 7,
            "results-dir": str(tmp_path / "res"),
            "plot": False,
        }
    )
    grid = InProcessGrid(client_app, 3)
    result = server_app.run(grid, cfg)
    assert not any(m.metadata.message_type == "train" for m in grid.sent)
    _assert_same_thresholds(result, _outputs_core(cfg, path, 3))
    data = _check_report(result, 3, tmp_path / "res")
    assert data["set_size_label"] == "set size"
    # calibration and test points went to the clients by TRUE label
    probs, labels = data_mod.load_model_outputs(path)
    seen = 0
    for pid, classes in enumerate(cfg.class_lists()):
        split = outputs.outputs_split(cfg, pid, 3)
        assert set(labels[split["cal"]]) <= set(classes) and set(labels[split["test"]]) <= set(classes)
        seen += len(split["cal"]) + len(split["test"])
    assert seen == len(labels)
    assert sum(len(outputs.outputs_split(cfg, p, 3)["cal"]) for p in range(3)) == 450


def test_outputs_dataset_log_probs_fraction_split_and_folding(tmp_path):
    """log_probs file, absolute path, calibration-fraction split, 4 label sets folded onto 2 nodes."""
    path = tmp_path / "lp.npz"
    _write_outputs(path, n=600, kind="log_probs")
    cfg = AppConfig.from_mapping(
        {
            "dataset": "outputs", "outputs-path": str(path), "calibration-fraction": 0.5, "num-server-rounds": 0,
            "client-classes": "0,1;2;3,4;5", "groups": "0-2;2-5", "methods": "fedcp,gcfcp", "deltas": "100",
            "results-dir": str(tmp_path / "res"), "plot": False,
        }
    )
    result = server_app.run(InProcessGrid(client_app, 2), cfg)
    folded = partitions.fold_classes(cfg.class_lists(), 2)
    assert folded == [[0, 1, 3, 4], [2, 5]]
    probs, labels = data_mod.load_model_outputs(path)
    perm = np.random.default_rng(cfg.seed).permutation(len(labels))
    cal = perm[:300]
    client = np.where(np.isin(labels[cal], folded[0]), 0, 1)
    scores = make_score("softmax").calibration_scores(probs[cal], labels[cal])
    _assert_same_thresholds(result, _core_thresholds(cfg, scores, probs[cal], client, 2, 6))
    _check_report(result, 2, tmp_path / "res")


def test_outputs_dataset_errors_are_clear(tmp_path):
    path = tmp_path / "o.npz"
    _write_outputs(path, n=100)
    base = {"dataset": "outputs", "outputs-path": str(path), "num-server-rounds": 0}
    with pytest.raises(ValueError, match="num-server-rounds must be 0"):
        AppConfig.from_mapping({**base, "num-server-rounds": 3})
    with pytest.raises(ValueError, match="needs outputs-path"):
        AppConfig.from_mapping({**base, "outputs-path": ""})
    with pytest.raises(ValueError, match="need a scalar covariate"):
        AppConfig.from_mapping({**base, "groups": "interval:0-1"})
    cfg = AppConfig.from_mapping({**base, "outputs-path": "no/such/file.npz"})
    with pytest.raises(FileNotFoundError, match="no/such/file.npz"):
        outputs.load_outputs(cfg)
    cfg = AppConfig.from_mapping({**base, "n-cal": 100})
    with pytest.raises(ValueError, match="n-cal must be <"):
        outputs.outputs_split(cfg, 0, 5)
    cfg = AppConfig.from_mapping({**base, "client-classes": "0,1;2,3;4,5;6,7;8,9"})  # file has 6 classes
    with pytest.raises(ValueError, match="has 6 classes"):
        outputs.outputs_split(cfg, 0, 5)


# ---------------------------------------------------------------------- confidence groups (App. E.2)
def test_confidence_groups_read_the_probability_rows(tmp_path):
    path = tmp_path / "probs.npz"
    _write_outputs(path, n=1200, kind="probs", seed=11)
    cfg = AppConfig.from_mapping(
        {
            "dataset": "outputs", "outputs-path": str(path), "n-cal": 600, "num-server-rounds": 0,
            "client-classes": "0,1;2,3;4,5", "groups": "confidence:4+rest",
            "methods": "split_cp,fedcp,mondrian,gcfcp", "deltas": "250",
            "results-dir": str(tmp_path / "res"), "plot": False,
        }
    )
    groups = parse_groups(cfg.groups, n_labels=6)
    probs, _ = data_mod.load_model_outputs(path)
    # the feature the app passes follows from the group spec: the probability rows (their maximum), not labels
    from flwr_gcfcp.flower.client import ModelOutputs, _features

    assert _features(ModelOutputs(probs=probs), groups, probs, len(probs)) is probs
    assert np.array_equal(groups.membership(probs), groups.membership(probs.max(axis=1)))
    result = server_app.run(InProcessGrid(client_app, 3), cfg)
    _assert_same_thresholds(result, _outputs_core(cfg, path, 3))
    data = _check_report(result, 5, tmp_path / "res")
    assert data["groups"]["names"][-1] == "rest"
    gm = data["methods"]["gcfcp_delta250"]["group_mass"]
    assert len(gm) == 5 and gm[3] > 0  # confident points land in [0.875, 1]


# ---------------------------------------------------------------------- §6.1 regression, interval sets
def test_regression_thresholds_equal_core_and_report_interval_length(tmp_path):
    from simulations.regression import RegressionSetting, regression_draw_fn

    cfg = AppConfig.from_mapping(
        {**tomllib.loads((CONF / "regression.toml").read_text()), "results-dir": str(tmp_path / "res"), "seed": 3}
    )
    result = server_app.run(InProcessGrid(client_app, 4), cfg)
    draw_fn = regression_draw_fn(RegressionSetting(), train_seed=cfg.seed + 12345)
    draw = draw_fn(np.random.default_rng(cfg.seed))  # the same points the 4 clients generated
    model = result.arrays
    assert float(model["intercept"].numpy()[0]) == draw_fn.model.intercept
    assert float(model["slope"].numpy()[0]) == draw_fn.model.slope
    assert np.bincount(draw.cal_client).tolist() == [1000, 333, 333, 333]
    _assert_same_thresholds(result, _core_thresholds(cfg, draw.cal_scores, draw.cal_features, draw.cal_client, 4, 1))

    data = _check_report(result, 4, tmp_path / "res")
    assert data["set_size_label"] == "interval length"
    assert sum(c["n_calibration"] for c in data["calibration_clients"]) == 1999
    split = data["methods"]["split_cp"]
    thr = result.calibrators["split_cp"].thresholds[0]
    assert split["group_interval_length"] == pytest.approx([2 * thr] * 4)  # one interval width everywhere
    assert split["marginal_interval_length"] == pytest.approx(2 * thr)
    gc = data["methods"]["gcfcp_delta250"]["group_interval_length"]
    assert len(gc) == 4 and all(0 < v < np.inf for v in gc)
    assert "interval length" in (latest_run(tmp_path / "res") / "results.md").read_text()
    # coverage is |y - f(x)| <= threshold on the 200 test points, mixed over the clients with π = 1/4
    x_t, y_t = draw.extra["x_test"], draw.extra["y_test"]
    assert sum(len(outputs.regression_split(cfg, p, 4)["y_test"]) for p in range(4)) == len(y_t) == 200
    cov = []
    for p in range(4):
        d = outputs.regression_split(cfg, p, 4)
        cov.append(np.mean(np.abs(d["y_test"] - draw_fn.model.predict(d["x_test"])) <= thr))
    assert split["marginal_coverage"] == pytest.approx(np.mean(cov))
    assert set(np.round(x_t, 12)) == set(np.round(np.concatenate(
        [outputs.regression_split(cfg, p, 4)["x_test"] for p in range(4)]), 12))


def test_regression_errors_are_clear():
    base = {"dataset": "regression", "score": "residual", "groups": "interval:0-2;1-3", "client-classes": "0;1;2;3"}
    with pytest.raises(ValueError, match="num-server-rounds must be 0"):
        AppConfig.from_mapping({**base, "num-server-rounds": 2})
    with pytest.raises(ValueError, match="score = 'residual'"):
        AppConfig.from_mapping({**base, "num-server-rounds": 0, "score": "softmax"})
    with pytest.raises(ValueError, match="use interval groups"):
        AppConfig.from_mapping({**base, "num-server-rounds": 0, "groups": "0-3;2-5"})
    with pytest.raises(ValueError, match="'residual' is for dataset 'regression'"):
        AppConfig.from_mapping({"score": "residual"})
    cfg = AppConfig.from_mapping({**base, "num-server-rounds": 0, "client-classes": "0;1;2;7"})
    with pytest.raises(ValueError, match="clients 0..3"):
        outputs.regression_split(cfg, 0, 4)


# ---------------------------------------------------------------------- the real preset files on the shared data
def _preset(name: str, tmp_path: Path) -> AppConfig:
    conf = tomllib.loads((CONF / f"{name}.toml").read_text())
    return AppConfig.from_mapping({**conf, "results-dir": str(tmp_path / "res"), "plot": False})


FAST_PRESETS = {  # preset -> (shared file it needs, number of groups)
    "cifar10": ("logits/cifar10_resnet56_test_logits.npz", 4),
    "pathmnist": ("logits/pathmnist_resnet50_test_logprobs.npz", 5),
    "confidence_groups": ("logits/cifar10_resnet56_test_logits.npz", 5),
    "regression": (None, 4),
}


MODEL_PRESETS = {  # presets that score images with a torch model: (dataset, num-server-rounds)
    "cifar10_resnet56_pretrained": ("cifar10-test-resnet56", 0),  # run below (slow)
    "cifar10_fedavg": ("cifar10-train", 3),  # run on generated images in tests/test_cifar10_train.py
}


def test_every_preset_is_covered_here():
    assert {p.stem for p in CONF.glob("*.toml")} == set(FAST_PRESETS) | set(MODEL_PRESETS)


@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
def test_model_presets_are_app_configs(name, tmp_path):
    cfg = _preset(name, tmp_path)
    assert (cfg.dataset, cfg.num_server_rounds) == MODEL_PRESETS[name]
    assert partitions.dataset_kind(cfg.dataset) == "model"


@pytest.mark.parametrize("name", sorted(FAST_PRESETS))
def test_real_preset_in_process(name, tmp_path):
    needs, n_groups = FAST_PRESETS[name]
    if needs is not None and not (data_mod.shared_data_dir() / needs).is_file():
        pytest.skip(
            f"preset {name}: shared data file {needs!r} not found under {str(data_mod.shared_data_dir())!r} "
            f"(set {data_mod.DATA_ENV_VAR} to the shared data folder, see ../shared/data/README.md)"
        )
    cfg = _preset(name, tmp_path)
    assert cfg.num_server_rounds == 0
    n_nodes = len(cfg.class_lists())
    result = server_app.run(InProcessGrid(client_app, n_nodes), cfg)
    data = _check_report(result, n_groups, tmp_path / "res")
    assert len(data["calibration_clients"]) == n_nodes
    for m in data["methods"].values():
        assert m["marginal_coverage"] > 0.8
    if needs is not None:
        probs, _ = data_mod.load_model_outputs(data_mod.shared_data_dir() / needs)
        assert data["methods"]["gcfcp_delta250"]["n"] == len(probs) - (cfg.n_cal or len(probs) // 2)
        if name != "confidence_groups":  # Table 2 / 4 pattern on one split: GC-FCP covers every group
            assert min(data["methods"]["gcfcp_delta250"]["group_coverage"]) >= 0.88
    if name == "cifar10":
        _assert_same_thresholds(result, _outputs_core(cfg, data_mod.shared_data_dir() / needs, 5))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_real_pretrained_resnet56_preset_in_process(tmp_path):
    """ResNet-56 forward passes over the 10,000 CIFAR-10 test images on CPU (about 50 s on 2 cores)."""
    for rel in ("cifar10/cifar10_test_jpeg_q75.npz", "weights/resnet56-4bfd9763.th"):
        data_mod.require_shared(rel)
    cfg = _preset("cifar10_resnet56_pretrained", tmp_path)
    result = server_app.run(InProcessGrid(client_app, 5), cfg)
    data = _check_report(result, 4, tmp_path / "res")
    assert data["methods"]["gcfcp_delta250"]["marginal_coverage"] > 0.85
