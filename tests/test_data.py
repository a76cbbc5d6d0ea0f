"""Tests of flwr_gcfcp.app.datasets: digits dataset, flwr-datasets partitions, loaders of every file format."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flwr_gcfcp.app import datasets as D

PAPER_SPLIT = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


@pytest.fixture(scope="module")
def digits():
    return D.load_digits_dataset()


# ----------------------------------------------------------------------------------------------
# digits and numpy conversion
# ----------------------------------------------------------------------------------------------
def test_data_module_imports_without_torch():
    code = "import sys, flwr_gcfcp.app.datasets; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_digits_dataset(digits):
    assert len(digits) == 1797
    assert set(digits.column_names) == {"x", "label", "index"}
    x, y = D.dataset_to_numpy(digits)
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert y.dtype == np.int64 and y.shape == (1797,)
    assert x.min() == 0.0 and x.max() == 1.0
    assert sorted(np.unique(y).tolist()) == list(range(10))
    from sklearn.datasets import load_digits

    ref = load_digits()
    np.testing.assert_allclose(x[:, 0], ref.images / 16.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(y, ref.target)


def test_arrays_to_dataset_validation():
    with pytest.raises(ValueError, match="y must have shape"):
        D.arrays_to_dataset(np.zeros((3, 2), np.float32), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=r"y must lie in \[0, 2\)"):
        D.arrays_to_dataset(np.zeros((3, 2), np.float32), np.array([0, 1, 2]), n_classes=2)
    with pytest.raises(ValueError, match="integer labels"):
        D.arrays_to_dataset(np.zeros((3, 2), np.float32), np.array([0.0, 1.0, 0.5]))
    ds = D.arrays_to_dataset(np.arange(6, dtype=np.float32).reshape(3, 2), np.array([1, 0, 1]))
    x, y = D.dataset_to_numpy(ds)
    np.testing.assert_array_equal(x, np.arange(6).reshape(3, 2))
    np.testing.assert_array_equal(y, [1, 0, 1])
    with pytest.raises(ValueError, match="x_column='nope'"):
        D.dataset_to_numpy(ds, x_column="nope")


# ----------------------------------------------------------------------------------------------
# partitions
# ----------------------------------------------------------------------------------------------
def test_partition_by_client_classes_paper_split(digits):
    parts = D.partition_by_client_classes(digits, PAPER_SPLIT, seed=3)
    assert len(parts) == 5
    _, y_all = D.dataset_to_numpy(digits)
    seen = []
    for k, part in enumerate(parts):
        x, y = D.dataset_to_numpy(part)
        assert set(np.unique(y).tolist()) == set(PAPER_SPLIT[k])
        # exactly the examples with those labels
        assert len(part) == int(np.isin(y_all, PAPER_SPLIT[k]).sum())
        idx = np.asarray(part.with_format("numpy")[:]["index"])
        np.testing.assert_array_equal(y_all[idx], y)
        assert x.shape[1:] == (1, 8, 8)
        seen.append(idx)
    allidx = np.concatenate(seen)
    assert len(np.unique(allidx)) == len(allidx) == len(digits)


def test_partition_by_client_classes_seed_and_dropping(digits):
    a = D.partition_by_client_classes(digits, [[0, 1], [5]], seed=1)
    b = D.partition_by_client_classes(digits, [[0, 1], [5]], seed=1)
    c = D.partition_by_client_classes(digits, [[0, 1], [5]], seed=2)
    ia = [np.asarray(p.with_format("numpy")[:]["index"]) for p in a]
    ib = [np.asarray(p.with_format("numpy")[:]["index"]) for p in b]
    ic = [np.asarray(p.with_format("numpy")[:]["index"]) for p in c]
    for u, v, w in zip(ia, ib, ic):
        np.testing.assert_array_equal(u, v)
        assert not np.array_equal(u, w)  # order changes with the seed
        np.testing.assert_array_equal(np.sort(u), np.sort(w))  # content does not
    # labels in no client are dropped; a client whose labels never occur gets an empty dataset
    parts = D.partition_by_client_classes(digits, [[7], [42]], seed=0, shuffle=False)
    assert len(parts[1]) == 0
    _, y = D.dataset_to_numpy(parts[0])
    assert set(y.tolist()) == {7}
    idx = np.asarray(parts[0].with_format("numpy")[:]["index"])
    assert np.all(np.diff(idx) > 0)  # shuffle=False keeps dataset order


@pytest.mark.parametrize(
    "classes, match",
    [
        ([], "client_classes must be a non-empty"),
        ([[0, 1], []], r"client_classes\[1\]"),
        ([[0, 1], [1, 2]], "label 1 is given to clients 0 and 1"),
        ([[0, 1.5]], r"client_classes\[0\] must hold int labels"),
    ],
)
def test_partition_by_client_classes_errors(digits, classes, match):
    with pytest.raises(ValueError, match=match):
        D.partition_by_client_classes(digits, classes, seed=0)


def test_partition_by_client_classes_bad_seed_and_column(digits):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        D.partition_by_client_classes(digits, PAPER_SPLIT, seed=-1)
    with pytest.raises(ValueError, match="label_column='y'"):
        D.partition_by_client_classes(digits, PAPER_SPLIT, seed=0, label_column="y")


def test_dirichlet_partition(digits):
    parts = D.dirichlet_partition(digits, num_partitions=4, alpha=0.3, seed=5)
    assert len(parts) == 4
    idx = np.concatenate([np.asarray(p.with_format("numpy")[:]["index"]) for p in parts])
    assert len(idx) == len(digits) and len(np.unique(idx)) == len(digits)
    assert min(len(p) for p in parts) >= 10
    again = D.dirichlet_partition(digits, num_partitions=4, alpha=0.3, seed=5)
    assert [len(p) for p in again] == [len(p) for p in parts]
    # strong skew: the label distributions differ between clients
    hists = [np.bincount(D.dataset_to_numpy(p)[1], minlength=10) / len(p) for p in parts]
    assert max(np.abs(h - hists[0]).sum() for h in hists[1:]) > 0.3
    with pytest.raises(ValueError, match="alpha must be a finite float > 0"):
        D.dirichlet_partition(digits, 4, alpha=0.0)
    with pytest.raises(ValueError, match="num_partitions must be an integer >= 1"):
        D.dirichlet_partition(digits, 0, alpha=1.0)
    with pytest.raises(ValueError, match="min_partition_size=1000"):
        D.dirichlet_partition(digits, 4, alpha=1.0, min_partition_size=1000)


def test_split_train_calibration(digits):
    part = D.partition_by_client_classes(digits, [[0, 1]], seed=0)[0]
    train, cal = D.split_train_calibration(part, calibration_fraction=0.25, seed=7)
    assert len(cal) == round(0.25 * len(part)) and len(train) + len(cal) == len(part)
    it = np.asarray(train.with_format("numpy")[:]["index"])
    ic = np.asarray(cal.with_format("numpy")[:]["index"])
    assert not set(it) & set(ic)
    assert set(it) | set(ic) == set(np.asarray(part.with_format("numpy")[:]["index"]))
    _, ic2 = D.split_train_calibration(part, 0.25, seed=7)
    np.testing.assert_array_equal(ic, np.asarray(ic2.with_format("numpy")[:]["index"]))
    _, ic3 = D.split_train_calibration(part, 0.25, seed=8)
    assert not np.array_equal(ic, np.asarray(ic3.with_format("numpy")[:]["index"]))
    for bad in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="calibration_fraction must lie in"):
            D.split_train_calibration(part, bad, seed=0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        D.split_train_calibration(part.select([0]), 0.5, seed=0)


# ----------------------------------------------------------------------------------------------
# CIFAR-10 loaders on files written here
# ----------------------------------------------------------------------------------------------
def _write_cifar_batches(root: Path, per_batch: int = 4, n_test: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written: dict[str, np.ndarray] = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        imgs = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        entry = {"batch_label": name, "labels": labels, "data": imgs.transpose(0, 3, 1, 2).reshape(n, -1)}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
        written[name + "/images"] = imgs
        written[name + "/labels"] = np.asarray(labels, dtype=np.int64)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}, f)
    return written


def test_load_cifar10_torchvision(tmp_path):
    pytest.importorskip("torchvision")
    written = _write_cifar_batches(tmp_path)
    imgs, labels = D.load_cifar10_torchvision(tmp_path, train=True, verify_md5=False)
    assert imgs.shape == (20, 32, 32, 3) and imgs.dtype == np.uint8 and labels.dtype == np.int64
    np.testing.assert_array_equal(imgs[:4], written["data_batch_1/images"])
    np.testing.assert_array_equal(imgs[16:], written["data_batch_5/images"])
    np.testing.assert_array_equal(labels[4:8], written["data_batch_2/labels"])
    timgs, tlabels = D.load_cifar10_torchvision(str(tmp_path), train=False, verify_md5=False)
    np.testing.assert_array_equal(timgs, written["test_batch/images"])
    np.testing.assert_array_equal(tlabels, written["test_batch/labels"])
    # the official MD5 check rejects these files with a clear message
    with pytest.raises(RuntimeError, match="verify_md5=False"):
        D.load_cifar10_torchvision(tmp_path, train=False)


def test_load_cifar10_torchvision_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        D.load_cifar10_torchvision(tmp_path / "nowhere", train=True)


def _jpeg_bytes_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> list[bytes]:
    from PIL import Image

    chunks = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=95)
        chunks.append(buf.getvalue())
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype(np.int64)
    blob = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    np.savez(path, jpeg_bytes=blob, offsets=offsets, labels=labels)
    return chunks


def test_decode_jpeg_bytes_npz(tmp_path):
    from PIL import Image

    # smooth images survive JPEG nearly unchanged
    yy, xx = np.mgrid[0:32, 0:32]
    images = np.stack(
        [np.stack([(xx * 4 + 10 * k) % 256, (yy * 4) % 256, np.full_like(xx, 40 * k)], -1) for k in range(5)]
    ).astype(np.uint8)
    labels = np.array([3, 1, 4, 1, 5])
    path = tmp_path / "bytes.npz"
    chunks = _jpeg_bytes_npz(path, images, labels)
    imgs, labs = D.decode_jpeg_bytes_npz(path)
    assert imgs.shape == (5, 32, 32, 3) and imgs.dtype == np.uint8
    np.testing.assert_array_equal(labs, labels)
    for k in range(5):
        np.testing.assert_array_equal(imgs[k], np.asarray(Image.open(io.BytesIO(chunks[k])).convert("RGB")))
    assert np.abs(imgs.astype(int) - images.astype(int)).mean() < 3.0
    sub, sublab = D.decode_jpeg_bytes_npz(path, indices=[4, 0])
    np.testing.assert_array_equal(sub, imgs[[4, 0]])
    np.testing.assert_array_equal(sublab, [5, 3])
    # load_cifar10_npz dispatches on the keys
    via, vialab = D.load_cifar10_npz(path, indices=[2])
    np.testing.assert_array_equal(via, imgs[[2]])
    np.testing.assert_array_equal(vialab, [4])
    with pytest.raises(ValueError, match="indices must lie in"):
        D.decode_jpeg_bytes_npz(path, indices=[5])
    bad = tmp_path / "bad.npz"
    np.savez(bad, jpeg_bytes=np.frombuffer(b"".join(chunks), np.uint8), offsets=np.array([0, 5]), labels=labels)
    with pytest.raises(ValueError, match="offsets"):
        D.decode_jpeg_bytes_npz(bad)


def test_load_cifar10_npz_layouts(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(7, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "plain.npz", images=images, labels=np.arange(7) % 10)
    imgs, labs = D.load_cifar10_npz(tmp_path / "plain.npz")
    np.testing.assert_array_equal(imgs, images)
    assert labs.dtype == np.int64 and labs.tolist() == list(range(7))
    np.savez(tmp_path / "prefix.npz", images=images[:3], labels_all=np.arange(20) % 10, n_images=np.int64(3))
    imgs, labs = D.load_cifar10_npz(tmp_path / "prefix.npz")
    assert imgs.shape == (3, 32, 32, 3) and labs.tolist() == [0, 1, 2]
    np.savez(tmp_path / "other.npz", x=images)
    with pytest.raises(ValueError, match="not a CIFAR-10 npz"):
        D.load_cifar10_npz(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        D.load_cifar10_npz(tmp_path / "missing.npz")


# ----------------------------------------------------------------------------------------------
# PathMNIST
# ----------------------------------------------------------------------------------------------
@pytest.fixture()
def pathmnist_file(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {}
    for split, n in (("train", 6), ("val", 3), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 9, size=(n, 1)).astype(np.uint8)
    path = tmp_path / "pathmnist.npz"
    np.savez(path, **arrays)
    return path, arrays


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_load_pathmnist_npz(pathmnist_file, split):
    path, arrays = pathmnist_file
    imgs, labs = D.load_pathmnist_npz(path, split)
    np.testing.assert_array_equal(imgs, arrays[f"{split}_images"])
    assert labs.dtype == np.int64 and labs.shape == (len(imgs),)
    np.testing.assert_array_equal(labs, arrays[f"{split}_labels"][:, 0])
    # a folder holding pathmnist.npz works too
    imgs2, _ = D.load_pathmnist_npz(path.parent, split)
    np.testing.assert_array_equal(imgs2, imgs)


def test_load_pathmnist_errors(pathmnist_file, tmp_path):
    path, _ = pathmnist_file
    with pytest.raises(ValueError, match="split must be one of"):
        D.load_pathmnist_npz(path, "validation")
    with pytest.raises(FileNotFoundError, match="pathmnist.npz"):
        D.load_pathmnist_npz(tmp_path / "empty_dir_that_does_not_exist" / "pathmnist.npz", "train")


def test_load_pathmnist_via_medmnist(pathmnist_file):
    pytest.importorskip("medmnist", reason="medmnist not installed: optional reader not exercised")
    path, arrays = pathmnist_file
    imgs, labs = D.load_pathmnist_npz(path, "val", use_medmnist=True)
    np.testing.assert_array_equal(imgs, arrays["val_images"])
    np.testing.assert_array_equal(labs, arrays["val_labels"][:, 0])


# ----------------------------------------------------------------------------------------------
# model outputs
# ----------------------------------------------------------------------------------------------
def test_load_model_outputs_logits_stable(tmp_path):
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    np.savez(tmp_path / "l.npz", logits=logits, labels=np.array([0, 2, 1]))
    probs, labels = D.load_model_outputs(tmp_path / "l.npz")
    assert probs.dtype == np.float64 and labels.dtype == np.int64
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(probs[0], [1.0, 0.0, 0.0], atol=1e-300)
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(probs[1], e / e.sum(), rtol=1e-12)
    np.testing.assert_allclose(probs[2], 1 / 3, rtol=1e-12)


def test_load_model_outputs_probs_and_log_probs(tmp_path):
    p = np.array([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]])
    np.savez(tmp_path / "p.npz", probs=p, labels=np.array([[0], [2]]))  # (n, 1) labels accepted
    probs, labels = D.load_model_outputs(tmp_path / "p.npz")
    np.testing.assert_allclose(probs, p, rtol=1e-12)
    assert labels.tolist() == [0, 2]
    # log-probabilities clipped at 1e-45 (as in the PathMNIST file) renormalise to rows summing to 1
    lp = np.log(np.array([[1e-45, 0.6, 0.4], [0.25, 0.25, 0.5]]))
    lp[1, 0] = -np.inf
    np.savez(tmp_path / "lp.npz", log_probs=lp, labels=np.array([1, 2]))
    probs, _ = D.load_model_outputs(tmp_path / "lp.npz")
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-15)
    assert probs[1, 0] == 0.0
    np.testing.assert_allclose(probs[1], [0.0, 1 / 3, 2 / 3], rtol=1e-12)


def test_load_model_outputs_errors(tmp_path):
    np.savez(tmp_path / "two.npz", logits=np.zeros((2, 3)), probs=np.full((2, 3), 1 / 3), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="exactly one of"):
        D.load_model_outputs(tmp_path / "two.npz")
    probs, _ = D.load_model_outputs(tmp_path / "two.npz", key="probs")
    np.testing.assert_allclose(probs, 1 / 3)
    np.savez(tmp_path / "lab.npz", logits=np.zeros((2, 3)), labels=np.array([0, 3]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        D.load_model_outputs(tmp_path / "lab.npz")
    np.savez(tmp_path / "sum.npz", probs=np.array([[0.5, 0.2]]), labels=np.array([0]))
    with pytest.raises(ValueError, match="rows must sum to 1"):
        D.load_model_outputs(tmp_path / "sum.npz")
    np.savez(tmp_path / "nolab.npz", logits=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="missing 'labels'"):
        D.load_model_outputs(tmp_path / "nolab.npz")
    with pytest.raises(ValueError, match="key must be one of"):
        D.load_model_outputs(tmp_path / "two.npz", key="scores")
    with pytest.raises(FileNotFoundError, match="model-output npz"):
        D.load_model_outputs(tmp_path / "absent.npz")


# ----------------------------------------------------------------------------------------------
# shared data folder
# ----------------------------------------------------------------------------------------------
def test_shared_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(D.DATA_ENV_VAR, str(tmp_path))
    assert D.shared_data_dir() == tmp_path
    (tmp_path / "a.npz").write_bytes(b"x")
    assert D.require_shared("a.npz") == tmp_path / "a.npz"
    with pytest.raises(FileNotFoundError, match=D.DATA_ENV_VAR):
        D.require_shared("b.npz", skip=False)
    monkeypatch.delenv(D.DATA_ENV_VAR)
    assert D.shared_data_dir() == Path(D.__file__).resolve().parents[3] / "shared" / "data"


# ----------------------------------------------------------------------------------------------
# real shared files (skipped with a message when absent)
# ----------------------------------------------------------------------------------------------
def test_real_cifar10_logits_accuracy():
    probs, labels = D.load_model_outputs(D.require_shared("logits/cifar10_resnet56_test_logits.npz"))
    assert probs.shape == (10000, 10) and labels.shape == (10000,)
    assert np.mean(probs.argmax(axis=1) == labels) == pytest.approx(0.9437, abs=1e-4)


def test_real_cifar100_and_pathmnist_outputs():
    probs, labels = D.load_model_outputs(D.require_shared("logits/cifar100_resnet56_test_logits.npz"))
    assert probs.shape == (10000, 100)
    assert np.mean(probs.argmax(axis=1) == labels) == pytest.approx(0.7263, abs=1e-4)
    probs, labels = D.load_model_outputs(D.require_shared("logits/pathmnist_resnet50_test_logprobs.npz"))
    assert probs.shape == (7180, 9)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert np.mean(probs.argmax(axis=1) == labels) == pytest.approx(0.9075, abs=1e-4)


def test_real_cifar10_npz_files():
    logit_labels = None
    lpath = D.shared_data_dir() / "logits/cifar10_resnet56_test_logits.npz"
    if lpath.exists():
        logit_labels = np.load(lpath)["labels"]
    imgs, labels = D.load_cifar10_npz(D.require_shared("cifar10/cifar10_test_exact_prefix846.npz"))
    assert imgs.shape == (846, 32, 32, 3) and imgs.dtype == np.uint8 and labels.shape == (846,)
    jimgs, jlabels = D.load_cifar10_npz(D.require_shared("cifar10/cifar10_test_jpeg_q75.npz"))
    assert jimgs.shape == (10000, 32, 32, 3) and jlabels.shape == (10000,)
    np.testing.assert_array_equal(jlabels[:846], labels)  # same official order
    # JPEG q75 copies are close to, but not equal to, the exact pixels
    diff = np.abs(jimgs[:846].astype(int) - imgs.astype(int)).mean()
    assert 0.5 < diff < 10.0
    if logit_labels is not None:
        np.testing.assert_array_equal(logit_labels, jlabels)
    timgs, tlabels = D.load_cifar10_npz(D.require_shared("cifar10/cifar10_train_jpeg_q75_bytes.npz"), indices=range(64))
    assert timgs.shape == (64, 32, 32, 3) and tlabels.shape == (64,)
    assert set(np.unique(tlabels)) <= set(range(10))
