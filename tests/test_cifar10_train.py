"""Federated training on CIFAR-10 images: the training-image loader, per-client splits, models, a local training
round and the in-process preset (``python -m simulations.cifar10_fedavg``) on small generated files.

The checks on the shared files (``../shared/data`` or ``$FLWR_GCFCP_DATA``) skip with a message naming the missing
file when it is absent.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from flwr_gcfcp.app import datasets as D

PAPER_SPLIT = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 1, 1, 3))
    noise = rng.integers(-30, 31, size=(n, 32, 32, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _write_jpeg_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> list[bytes]:
    """The shared training file's format: concatenated JPEG files, offsets, labels."""
    from PIL import Image

    chunks = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=75)
        chunks.append(buf.getvalue())
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype(np.int64)
    np.savez(path, jpeg_bytes=np.frombuffer(b"".join(chunks), np.uint8), offsets=offsets, labels=labels)
    return chunks


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """A data folder laid out like the shared one: 10 classes, 7 training JPEGs and 10 test images per class."""
    root = tmp_path_factory.mktemp("shared")
    (root / "cifar10").mkdir()
    train_labels = np.tile(np.arange(10), 7)[np.random.default_rng(1).permutation(70)]
    chunks = _write_jpeg_npz(root / D.CIFAR10_TRAIN_FILE, _images(70, 0), train_labels)
    test_labels = np.repeat(np.arange(10), 10)[np.random.default_rng(2).permutation(100)]
    np.savez(root / D.CIFAR10_TEST_FILE, images=_images(100, 3), labels=test_labels)
    return {"root": root, "train_labels": train_labels, "test_labels": test_labels, "chunks": chunks}


def _decode(chunk: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(chunk)) as im:
        return np.asarray(im.convert("RGB"))


# ----------------------------------------------------------------------------------------------
# loader and per-client splits
# ----------------------------------------------------------------------------------------------
def test_load_cifar10_train_dataset(cifar_dir):
    path = cifar_dir["root"] / D.CIFAR10_TRAIN_FILE
    ds = D.load_cifar10_train_dataset(path)
    assert len(ds) == 70 and set(ds.column_names) == {"x", "label", "index"}
    x, y = D.dataset_to_numpy(ds)
    assert x.shape == (70, 32, 32, 3) and ds.features["x"].dtype == "uint8"  # the numpy formatter may widen it
    np.testing.assert_array_equal(y, cifar_dir["train_labels"])
    for i in (0, 33, 69):  # the JPEG bytes decoded independently with Pillow
        np.testing.assert_array_equal(x[i], _decode(cifar_dir["chunks"][i]))
    light = D.load_cifar10_train_dataset(path, decode=False)
    assert set(light.column_names) == {"label", "index"}
    assert light.features["label"].num_classes == 10
    np.testing.assert_array_equal(light["index"], np.arange(70))
    # partitionable with flwr-datasets like the other presets
    parts = D.partition_by_client_classes(light, PAPER_SPLIT, seed=0)
    assert [len(p) for p in parts] == [14] * 5
    assert set(parts[2]["label"]) == {4, 5}


def test_load_cifar10_train_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="path='.*nope.npz'"):
        D.load_cifar10_train_dataset(tmp_path / "nope.npz")
    np.savez(tmp_path / "bad.npz", jpeg_bytes=np.zeros(3, np.uint8), offsets=np.array([0, 3]), labels=np.array([10]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        D.load_cifar10_train_dataset(tmp_path / "bad.npz", decode=False)


def test_client_splits_brute_force(cifar_dir):
    root = cifar_dir["root"]
    kw = {"train_path": root / D.CIFAR10_TRAIN_FILE, "test_path": root / D.CIFAR10_TEST_FILE}
    splits = D.cifar10_train_client_splits(PAPER_SPLIT, 9, calibration_fraction=0.25, seed=3, **kw)
    test_images = np.load(root / D.CIFAR10_TEST_FILE)["images"]
    assert len(splits) == 5
    for k, s in enumerate(splits):
        classes = PAPER_SPLIT[k]
        # training rows: 9 distinct images of the client's classes (14 available), decoded from exactly those rows
        assert len(np.unique(s.train_rows)) == 9
        assert set(cifar_dir["train_labels"][s.train_rows]) <= set(classes)
        np.testing.assert_array_equal(s.y_train, cifar_dir["train_labels"][s.train_rows])
        np.testing.assert_array_equal(s.x_train[0], _decode(cifar_dir["chunks"][s.train_rows[0]]))
        # held-out rows: every test image of the client's classes, split 5 calibration / 15 test, disjoint
        held = np.flatnonzero(np.isin(cifar_dir["test_labels"], classes))
        assert sorted([*s.cal_rows, *s.test_rows]) == sorted(held)
        assert len(s.cal_rows) == 5 and len(s.test_rows) == 15
        np.testing.assert_array_equal(s.x_cal, test_images[s.cal_rows])
        np.testing.assert_array_equal(s.y_test, cifar_dir["test_labels"][s.test_rows])
    # the same seed gives the same splits; one client alone equals its entry; another seed reshuffles
    again = D.cifar10_train_client_splits(PAPER_SPLIT, 9, calibration_fraction=0.25, seed=3, partition_ids=[4], **kw)
    np.testing.assert_array_equal(again[0].train_rows, splits[4].train_rows)
    np.testing.assert_array_equal(again[0].cal_rows, splits[4].cal_rows)
    other = D.cifar10_train_client_splits(PAPER_SPLIT, 9, calibration_fraction=0.25, seed=4, **kw)
    assert any(not np.array_equal(a.train_rows, b.train_rows) for a, b in zip(splits, other))
    # caps: more images than the client holds keeps them all; heldout_per_client caps before the split
    capped = D.cifar10_train_client_splits([[0], [1, 2]], 100, heldout_per_client=6, seed=0, **kw)
    assert [len(s.train_rows) for s in capped] == [7, 14]
    assert [len(s.cal_rows) + len(s.test_rows) for s in capped] == [6, 6]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"images_per_client": 0}, ValueError, "images_per_client must be an integer >= 1, got 0"),
        ({"images_per_client": True}, ValueError, "images_per_client"),
        ({"heldout_per_client": 1}, ValueError, "heldout_per_client must be 0"),
        ({"partition_ids": [5]}, ValueError, r"partition_ids must lie in \[0, 5\)"),
        ({"calibration_fraction": 1.0}, ValueError, "calibration_fraction must lie in"),
        ({"seed": -1}, ValueError, "seed must be a non-negative integer"),
        ({"train_path": "missing.npz"}, FileNotFoundError, "train_path='missing.npz'"),
        ({"test_path": "missing.npz"}, FileNotFoundError, "test_path='missing.npz'"),
    ],
)
def test_client_splits_errors(cifar_dir, kwargs, error, match):
    root = cifar_dir["root"]
    args = {"client_classes": PAPER_SPLIT, "images_per_client": 4, "train_path": root / D.CIFAR10_TRAIN_FILE,
            "test_path": root / D.CIFAR10_TEST_FILE, **kwargs}
    with pytest.raises(error, match=match):
        D.cifar10_train_client_splits(**args)


def test_client_without_images_is_an_error(tmp_path, cifar_dir):
    np.savez(tmp_path / "test.npz", images=_images(4, 0), labels=np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match=r"client_classes\[1\]=\[2, 3\].*0 held-out images"):
        D.cifar10_train_client_splits([[0, 1], [2, 3]], 2, train_path=cifar_dir["root"] / D.CIFAR10_TRAIN_FILE,
                                      test_path=tmp_path / "test.npz")


# ----------------------------------------------------------------------------------------------
# models and one local training round
# ----------------------------------------------------------------------------------------------
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("name", ["smallcnn", "resnet20"])
def test_make_cifar10_model_random(name):
    from flwr_gcfcp.app.models import get_weights, make_cifar10_model

    m = make_cifar10_model(name, seed=1)
    assert not m.training
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    same = make_cifar10_model(name, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(get_weights(m), get_weights(same)))
    with pytest.raises(ValueError, match="model must be one of"):
        make_cifar10_model("resnet18")


def test_augment_is_a_crop_of_the_padded_image_or_its_mirror():
    from flwr_gcfcp.app.training import _augment

    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    out = _augment(x, np.random.default_rng(0), pad=2)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        crops = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)


def _tiny_data(n=24, seed=0):
    from flwr_gcfcp.app.models import cifar_transform

    rng = np.random.default_rng(seed)
    return cifar_transform(_images(n, seed)), rng.integers(0, 2, size=n)


def test_diverging_training_is_a_clear_error():
    from flwr_gcfcp.app.models import make_cifar10_model
    from flwr_gcfcp.app.training import train

    x, y = _tiny_data()
    with pytest.raises(FloatingPointError, match=r"training diverged: loss nan .*lower lr=1000000.0"):
        train(make_cifar10_model("smallcnn"), x, y, epochs=3, lr=1e6, batch_size=8)


def test_one_training_round_on_a_few_images():
    """A client's local round as the preset runs it (augmented SGD with momentum and weight decay); deterministic."""
    from flwr_gcfcp.app.models import get_weights, make_cifar10_model
    from flwr_gcfcp.app.training import train

    x, y = _tiny_data()
    m = make_cifar10_model("resnet20", seed=0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    kw = {"epochs": 1, "lr": 0.01, "batch_size": 8, "seed": 5, "weight_decay": 5e-4, "augment": True}
    loss = train(m, x, y, **kw)
    assert np.isfinite(loss) and loss > 0
    after = m.state_dict()
    for key in ("conv1.weight", "bn1.weight", "bn1.running_mean", "linear.bias"):
        assert not torch.equal(before[key], after[key]), key
    assert int(after["bn1.num_batches_tracked"]) == 3
    m2 = make_cifar10_model("resnet20", seed=0)
    train(m2, x, y, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(get_weights(m), get_weights(m2)))
    m3 = make_cifar10_model("resnet20", seed=0)
    train(m3, x, y, **{**kw, "seed": 6})  # another seed: another batch order and augmentation
    assert not np.array_equal(get_weights(m)[0], get_weights(m3)[0])


def test_predict_progress_reports_every_batch():
    from flwr_gcfcp.app.models import make_cifar10_model
    from flwr_gcfcp.app.training import predict_proba

    x, _ = _tiny_data(10)
    calls = []
    p = predict_proba(make_cifar10_model("smallcnn"), x, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 10), (8, 10), (10, 10)]
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_federated_average_brute_force():
    from simulations.cifar10_fedavg import federated_average

    rng = np.random.default_rng(0)
    states = [[rng.normal(size=(2, 3)).astype(np.float32), np.array(k * 3, dtype=np.int64)] for k in range(3)]
    avg = federated_average(states, [1, 2, 5])
    expected = (1 * states[0][0].astype(float) + 2 * states[1][0] + 5 * states[2][0]) / 8
    np.testing.assert_allclose(avg[0], expected, rtol=1e-6)
    assert avg[0].dtype == np.float32 and avg[1].dtype == np.int64 and int(avg[1]) == round((0 + 6 + 30) / 8)
    with pytest.raises(ValueError, match="weight"):
        federated_average(states, [1, 2])


# ----------------------------------------------------------------------------------------------
# the preset, in process
# ----------------------------------------------------------------------------------------------
def test_preset_file_has_the_script_keys():
    from simulations.cifar10_fedavg import DEFAULT_CONFIG, KEYS, load_preset

    cfg = load_preset(DEFAULT_CONFIG)
    assert set(cfg) == set(KEYS)
    assert cfg["model"] == "resnet20-pretrained" and cfg["client-classes"] == "0,1;2,3;4,5;6,7;8,9"


@pytest.mark.filterwarnings("ignore::flwr_gcfcp.core.validation.InsufficientDataWarning")  # 10 calibration images
def test_preset_runs_in_process_on_generated_files(cifar_dir, tmp_path, capsys):
    from simulations.cifar10_fedavg import main

    out = tmp_path / "out"
    rc = main(["--data-dir", str(cifar_dir["root"]), "--model", "smallcnn", "--rounds", "1",
               "--images-per-client", "6", "--threads", "1", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "cifar10_fedavg.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1]
    assert report["accuracy_before"] == report["rounds"][0]["accuracy"]
    assert report["accuracy_after"] == report["rounds"][1]["accuracy"]
    assert report["rounds"][0]["n"] == 50  # half of every client's 20 held-out images test (10 calibrate: >= 9)
    assert [c["train"] for c in report["clients"]] == [6] * 5
    names = {"split_cp", "fedcp", "condcp", "centralized_gcfcp", "gcfcp_delta250"}
    assert set(report["methods"]) == names
    for m in report["methods"].values():
        assert len(m["group_coverage"]) == 4 and 0.0 <= m["marginal_coverage"] <= 1.0
        assert 0.0 <= m["marginal_set_size"] <= 10.0
    assert report["timings"]["total_s"] > 0 and report["timings"]["cpu_s"] > 0
    md = (out / "cifar10_fedavg.md").read_text()
    assert "| 0 |" in md and "| 1 |" in md and "gcfcp_delta250" in md
    assert (out / "cifar10_fedavg_coverage.png").stat().st_size > 5000
    printed = capsys.readouterr().out
    assert "[round 0/1] accuracy before training" in printed and "[round 1/1] accuracy" in printed
    assert "client 5/5" in printed


def test_preset_reports_missing_data(tmp_path, capsys):
    from simulations.cifar10_fedavg import main

    rc = main(["--data-dir", str(tmp_path), "--model", "smallcnn", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "cifar10_train_jpeg_q75_bytes.npz" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# the preset as the bundled Flower app runs it (dataset "cifar10-train")
# ----------------------------------------------------------------------------------------------
PRESET = Path(__file__).resolve().parent.parent / "simulations" / "conf" / "cifar10_fedavg.toml"


@pytest.fixture(scope="module")
def app_data_dir(cifar_dir):
    """The generated data folder plus a (seeded, untrained) ResNet-20 checkpoint in the shared weights' format."""
    from flwr_gcfcp.app.models import PRETRAINED_CIFAR_RESNET_FILES, cifar_resnet

    root = cifar_dir["root"]
    path = root / PRETRAINED_CIFAR_RESNET_FILES[20]
    if not path.is_file():
        path.parent.mkdir(exist_ok=True)
        torch.manual_seed(11)
        state = {f"module.{k}": v for k, v in cifar_resnet(20).state_dict().items()}
        torch.save({"state_dict": state}, path)
    return root


def _preset_config(root: Path, results: Path, **overrides):
    import tomllib

    from flwr_gcfcp.app.config import AppConfig

    conf = tomllib.loads(PRESET.read_text())
    base = {"data-dir": str(root), "results-dir": str(results), "plot": False, "calibration-timeout": 60.0,
            "images-per-client": 4, "num-server-rounds": 1}
    return AppConfig.from_mapping({**conf, **base, **overrides})


@pytest.mark.usefixtures("restore_torch_threads")
@pytest.mark.filterwarnings("ignore::flwr_gcfcp.core.validation.InsufficientDataWarning")  # 10 calibration images
def test_preset_through_the_app_in_process(app_data_dir, tmp_path):
    """The preset through the bundled ServerApp/ClientApp: the trained model equals FedAvg computed here with the
    script's recipe (same splits, seeds per round and client, momentum, weight decay, augmentation), the accuracy
    before/after equals the models' accuracy on the clients' test images, and the conformal rounds ran on the
    held-out images (10 calibrating per client: >= 9, so no client is excluded)."""
    from flwr_gcfcp.app import server_app
    from flwr_gcfcp.app.client_app import app as client_app
    from flwr_gcfcp.app.models import PRETRAINED_CIFAR_RESNET_FILES, cifar_transform, get_weights, make_cifar10_model
    from flwr_gcfcp.app.status import check
    from flwr_gcfcp.app.training import predict_logits, train
    from flwr_gcfcp.flower.inprocess import InProcessGrid
    from simulations.cifar10_fedavg import federated_average

    root = app_data_dir
    cfg = _preset_config(root, tmp_path / "res")
    assert cfg.dataset == "cifar10-train" and cfg.model == "resnet20-pretrained"
    result = server_app.run(InProcessGrid(client_app, 5), cfg)
    assert check(tmp_path / "res")[0] == 0

    # FedAvg computed here (the script's federated_average: float64 mean, integer buffers rounded)
    weights = root / PRETRAINED_CIFAR_RESNET_FILES[20]
    splits = D.cifar10_train_client_splits(PAPER_SPLIT, 4, calibration_fraction=0.5, seed=0,
                                           train_path=root / D.CIFAR10_TRAIN_FILE, test_path=root / D.CIFAR10_TEST_FILE)
    initial = make_cifar10_model("resnet20-pretrained", weights_path=weights)
    states = []
    for k, s in enumerate(splits):
        local = make_cifar10_model("resnet20-pretrained", weights_path=weights)
        train(local, cifar_transform(s.x_train), s.y_train, epochs=1, lr=0.003, batch_size=128,
              seed=0 * 100_003 + 1 * 101 + k, momentum=0.9, weight_decay=5e-4, augment=True)
        states.append(get_weights(local))
    expected = federated_average(states, [len(s.y_train) for s in splits])
    names = list(initial.state_dict())
    got = result.arrays
    assert list(got.keys()) == names
    for name, want in zip(names, expected):
        have = got[name].numpy()
        assert have.dtype == want.dtype, name
        if np.issubdtype(want.dtype, np.integer):  # BatchNorm's num_batches_tracked: one batch per client
            assert np.array_equal(have, want) and int(want) == 1, name
        else:
            np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6, err_msg=name)
    assert not np.array_equal(got["linear.weight"].numpy(), initial.state_dict()["linear.weight"].numpy())

    def accuracy(model) -> float:
        hits = [int(np.sum(predict_logits(model, cifar_transform(s.x_test)).argmax(axis=1) == s.y_test)) for s in splits]
        return sum(hits) / sum(len(s.y_test) for s in splits)

    final = make_cifar10_model("resnet20")
    final.load_state_dict(got.to_torch_state_dict())
    data = json.loads(Path(result.files["json"]).read_text())
    assert data["accuracy_before"] == accuracy(initial)
    assert data["accuracy_after"] == accuracy(final)
    rounds = data["training_rounds"]
    assert [r["round"] for r in rounds] == [0, 1] and [r["n"] for r in rounds] == [50, 50]
    assert rounds[0]["train_loss"] is None and rounds[1]["train_loss"] > 0
    # the conformal rounds on the held-out images: 10 calibrate and 10 test per client
    assert sorted(c["n_calibration"] for c in data["calibration_clients"]) == [10] * 5
    assert not data["excluded_clients"]
    assert set(data["methods"]) == {"split_cp", "fedcp", "condcp", "centralized_gcfcp", "gcfcp_delta250"}
    for m in data["methods"].values():
        assert m["n"] == 50 and len(m["group_coverage"]) == 4


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("model", "resnet18", r"model must be one of \('resnet20-pretrained', 'resnet20', 'smallcnn'\), got 'resnet18'"),
        ("images-per-client", 0, "images-per-client must be >= 1, got 0"),
        ("heldout-per-client", 1, "heldout-per-client must be 0 .* or >= 2 .*got 1"),
        ("heldout-per-client", -3, "heldout-per-client must be 0 .* or >= 2 .*got -3"),
    ],
)
def test_preset_keys_are_checked(key, value, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        _preset_config(tmp_path, tmp_path / "res", **{key: value})


@pytest.mark.usefixtures("restore_torch_threads")
def test_missing_pretrained_weights_fail_before_training(cifar_dir, tmp_path):
    from flwr_gcfcp.app import server_app
    from flwr_gcfcp.app.client_app import app as client_app
    from flwr_gcfcp.flower.inprocess import InProcessGrid

    empty = tmp_path / "data"
    empty.mkdir()
    grid = InProcessGrid(client_app, 5)
    with pytest.raises(FileNotFoundError, match="weights/resnet20-12fca82f.th.*data-dir"):
        server_app.run(grid, _preset_config(empty, tmp_path / "res"))
    assert not grid.sent


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v) if isinstance(v, str) else repr(v)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_preset_through_flwr_run(app_data_dir, tmp_path, flwr_env):
    """`flwr run . --run-config simulations/conf/cifar10_fedavg.toml` on a small slice of generated images (8 per
    client, 20 held out, one round), the data folder given as data-dir: trains, calibrates and records the
    accuracy before/after; the run folder's status is ok."""
    import subprocess
    import sys
    import tomllib

    from flwr_gcfcp.app import deploy
    from flwr_gcfcp.app.status import check, latest_run

    repo = PRESET.parent.parent.parent
    base = tmp_path / "results"
    conf = {**tomllib.loads(PRESET.read_text()), "data-dir": str(app_data_dir), "results-dir": str(base),
            "images-per-client": 8, "heldout-per-client": 20, "num-server-rounds": 1}
    merged = tmp_path / "cifar10_fedavg_small.toml"  # a toml cannot be mixed with key=value overrides
    merged.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in conf.items()))
    env = {k: v for k, v in flwr_env.items() if k != D.DATA_ENV_VAR}
    exe = Path(sys.executable).parent / "flwr"
    cmd = [str(exe) if exe.exists() else "flwr", "run", str(repo), "--federation-config",
           "num-supernodes=5 client-resources-num-cpus=2", "--run-config", str(merged), "--stream"]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        code, line = check(base, wait=60)
        assert code == 0, line + (proc.stdout + proc.stderr)[-3000:]
    finally:
        deploy.stop_pid_trees(deploy.pids_with_arg(flwr_env["FLWR_HOME"]))
    data = json.loads((latest_run(base) / "results.json").read_text())
    assert data["config"]["dataset"] == "cifar10-train" and data["config"]["images-per-client"] == 8
    assert [r["round"] for r in data["training_rounds"]] == [0, 1]
    assert 0.0 <= data["accuracy_before"] <= 1.0 and 0.0 <= data["accuracy_after"] <= 1.0
    assert sorted(c["n_calibration"] for c in data["calibration_clients"]) == [10] * 5
    assert not data["excluded_clients"] and data["status"] == "evaluated"
    log = proc.stdout + proc.stderr
    assert "[training] accuracy of the global model before training: " in log
    assert "[training] accuracy of the global model after round 1: " in log


# ----------------------------------------------------------------------------------------------
# the shared files
# ----------------------------------------------------------------------------------------------
def test_real_training_images_and_pretrained_resnet20():
    from flwr_gcfcp.app.models import PRETRAINED_CIFAR_RESNET_FILES, cifar_transform, make_cifar10_model
    from flwr_gcfcp.app.training import predict_logits

    train_path = D.require_shared(D.CIFAR10_TRAIN_FILE)
    test_path = D.require_shared(D.CIFAR10_TEST_FILE)
    weights = D.require_shared(PRETRAINED_CIFAR_RESNET_FILES[20])
    ds = D.load_cifar10_train_dataset(train_path, decode=False)
    assert len(ds) == 50000
    assert np.bincount(np.asarray(ds["label"]), minlength=10).tolist() == [5000] * 10
    (split,) = D.cifar10_train_client_splits(PAPER_SPLIT, 50, heldout_per_client=200, partition_ids=[1],
                                             train_path=train_path, test_path=test_path)
    assert split.x_train.shape == (50, 32, 32, 3) and set(split.y_train) <= {2, 3}
    assert len(split.y_cal) == len(split.y_test) == 100
    model = make_cifar10_model("resnet20-pretrained", weights_path=weights)
    x = np.concatenate([split.x_cal, split.x_test])
    y = np.concatenate([split.y_cal, split.y_test])
    acc = float(np.mean(predict_logits(model, cifar_transform(x)).argmax(axis=1) == y))
    assert acc > 0.6  # birds and cats (classes 2, 3) are hard: 0.725 on these 200 JPEG q75 test images
