"""Tests of flwr_gcfcp.app.models and flwr_gcfcp.app.training (torch on CPU)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flwr_gcfcp.app import datasets as D  # noqa: E402
from flwr_gcfcp.app import models as M  # noqa: E402
from flwr_gcfcp.app import training as T  # noqa: E402


@pytest.fixture(scope="module")
def digits_xy():
    return D.dataset_to_numpy(D.load_digits_dataset())


def _shared_weights(depth: int):
    folder = D.require_shared("weights")
    found = sorted(folder.glob(f"resnet{depth}-*.th"))
    if not found:
        pytest.skip(f"no resnet{depth}-*.th in {folder}")
    return found[0]


# ----------------------------------------------------------------------------------------------
# architectures
# ----------------------------------------------------------------------------------------------
def test_small_cnn_shapes():
    m = M.SmallCNN()
    assert m(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
    assert sum(p.numel() for p in m.parameters()) < 60_000
    m3 = M.SmallCNN(n_classes=9, in_channels=3, image_size=28)
    assert m3(torch.zeros(2, 3, 28, 28)).shape == (2, 9)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 1, H, W\)"):
        m(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="n_classes must be an integer >= 2, got 1"):
        M.SmallCNN(n_classes=1)
    with pytest.raises(ValueError, match="image_size"):
        M.SmallCNN(image_size=2)


@pytest.mark.parametrize("depth, n_params", [(20, 0.27e6), (32, 0.46e6), (44, 0.66e6), (56, 0.85e6)])
def test_cifar_resnet_sizes(depth, n_params):
    m = M.cifar_resnet(depth)
    assert m.depth == depth
    n = sum(p.numel() for p in m.parameters())
    assert abs(n - n_params) / n_params < 0.03, n  # He et al. (2016), Table 6
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert len(convs) + 1 == depth  # weighted layers = convs + final FC; option A adds none
    m.eval()
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_option_a_shortcut():
    block = M.cifar_resnet(20).layer2[0]
    x = torch.randn(1, 16, 8, 8)
    s = block.shortcut(x)
    assert s.shape == (1, 32, 4, 4)
    torch.testing.assert_close(s[:, 8:24], x[:, :, ::2, ::2])
    assert torch.all(s[:, :8] == 0) and torch.all(s[:, 24:] == 0)
    with pytest.raises(ValueError, match="depth must be one of"):
        M.cifar_resnet(18)


def test_cifar_transform():
    img = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    img[1] = 255
    x = M.cifar_transform(img)
    assert x.shape == (2, 3, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], -np.array(M.CIFAR_MEAN) / np.array(M.CIFAR_STD), rtol=1e-6)
    np.testing.assert_allclose(x[1, :, 0, 0], (1 - np.array(M.CIFAR_MEAN)) / np.array(M.CIFAR_STD), rtol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        M.cifar_transform(img.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(n, H, W, 3\)"):
        M.cifar_transform(np.zeros((2, 3, 4, 4), np.uint8))


# ----------------------------------------------------------------------------------------------
# weights <-> numpy
# ----------------------------------------------------------------------------------------------
def test_get_set_weights_roundtrip():
    torch.manual_seed(0)
    a, b = M.cifar_resnet(20), M.cifar_resnet(20)
    wa = M.get_weights(a)
    assert len(wa) == len(a.state_dict()) and all(isinstance(w, np.ndarray) for w in wa)
    wa[0][...] = 7.0  # copies: editing them does not touch the model
    assert not torch.all(a.conv1.weight == 7.0)
    wa = M.get_weights(a)
    M.set_weights(b, wa)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    with pytest.raises(ValueError, match="arrays must hold"):
        M.set_weights(b, wa[:-1])
    bad = list(wa)
    bad[0] = np.zeros((1, 2))
    with pytest.raises(ValueError, match="entry 'conv1.weight' must have shape"):
        M.set_weights(b, bad)


def test_weights_through_flower_arrayrecord():
    flwr_app = pytest.importorskip("flwr.app")
    m = M.SmallCNN()
    record = flwr_app.ArrayRecord(M.get_weights(m))
    m2 = M.SmallCNN()
    M.set_weights(m2, record.to_numpy_ndarrays())
    x = torch.randn(3, 1, 8, 8)
    m.eval(), m2.eval()
    torch.testing.assert_close(m(x), m2(x), rtol=0, atol=0)


def test_load_pretrained_from_written_checkpoint(tmp_path):
    torch.manual_seed(1)
    src = M.cifar_resnet(20)
    # give the BN buffers non-default values so that the load is observable
    for mod in src.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    state = {"module." + k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet20-test.th"
    torch.save({"state_dict": state, "best_prec1": 0.0}, path)
    loaded = M.load_pretrained_cifar_resnet(path)
    assert loaded.depth == 20 and not loaded.training
    src.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), src(x))
    with pytest.raises(ValueError, match="depth=56 does not match"):
        M.load_pretrained_cifar_resnet(path, depth=56)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        M.load_pretrained_cifar_resnet(tmp_path / "absent.th")
    # strict: an unexpected key fails
    state["module.extra"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "extra.th")
    with pytest.raises(RuntimeError, match="extra"):
        M.load_pretrained_cifar_resnet(tmp_path / "extra.th")


# ----------------------------------------------------------------------------------------------
# training loops
# ----------------------------------------------------------------------------------------------
def test_train_learns_digits_and_is_deterministic(digits_xy):
    x, y = digits_xy
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    tr, te = perm[:1200], perm[1200:]
    torch.manual_seed(0)
    m1 = M.SmallCNN()
    init = M.get_weights(m1)
    loss_before, _ = T.evaluate(m1, x[te], y[te])
    mean_loss = T.train(m1, x[tr], y[tr], epochs=4, lr=0.05, seed=3, num_threads=1)
    assert np.isfinite(mean_loss) and mean_loss < loss_before
    loss, acc = T.evaluate(m1, x[te], y[te])
    assert acc > 0.9 and loss < loss_before
    m2 = M.SmallCNN()
    M.set_weights(m2, init)
    assert T.train(m2, x[tr], y[tr], epochs=4, lr=0.05, seed=3, num_threads=1) == mean_loss
    for w1, w2 in zip(M.get_weights(m1), M.get_weights(m2)):
        np.testing.assert_array_equal(w1, w2)
    m3 = M.SmallCNN()
    M.set_weights(m3, init)
    T.train(m3, x[tr], y[tr], epochs=1, lr=1e-3, seed=3, optimizer="adam", batch_size=64)
    assert not np.array_equal(M.get_weights(m3)[0], init[0])


def test_predict_proba_and_evaluate(digits_xy):
    x, y = digits_xy
    torch.manual_seed(0)
    m = M.SmallCNN()
    p = T.predict_proba(m, x[:100], batch_size=7)
    assert p.dtype == np.float64 and p.shape == (100, 10)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-14)
    logits = T.predict_logits(m, x[:100], batch_size=7)
    assert logits.dtype == np.float64
    ref = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
    np.testing.assert_allclose(p, ref, rtol=1e-12)
    # the batch size changes float32 rounding in the convolutions only
    np.testing.assert_allclose(T.predict_proba(m, x[:100]), p, rtol=1e-5)
    loss, acc = T.evaluate(m, x[:100], y[:100])
    np.testing.assert_allclose(loss, -np.mean(np.log(p[np.arange(100), y[:100]])), rtol=1e-6)
    assert acc == np.mean(p.argmax(axis=1) == y[:100])


def test_training_errors(digits_xy):
    x, y = digits_xy
    m = M.SmallCNN()
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        T.train(m, x, y, epochs=0, lr=0.1)
    with pytest.raises(ValueError, match="lr must be a finite float > 0, got -1"):
        T.train(m, x, y, epochs=1, lr=-1)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        T.train(m, x, y, epochs=1, lr=0.1, optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"y must have shape \(1797,\)"):
        T.train(m, x, y[:10], epochs=1, lr=0.1)
    with pytest.raises(ValueError, match="uint8"):
        T.predict_proba(m, np.zeros((2, 1, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="num_threads must be an integer >= 1"):
        T.set_torch_threads(0)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 10\)"):
        T.evaluate(m, x[:3], np.array([0, 1, 10]))


# ----------------------------------------------------------------------------------------------
# shared pretrained weights (skipped with a message when absent)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exact846():
    images, labels = D.load_cifar10_npz(D.require_shared("cifar10/cifar10_test_exact_prefix846.npz"))
    return M.cifar_transform(images), labels


@pytest.fixture(scope="module")
def resnet56_probs(exact846):
    model = M.load_pretrained_cifar_resnet(_shared_weights(56), depth=56)
    return T.predict_proba(model, exact846[0], batch_size=256)


def test_pretrained_resnet20_accuracy_on_exact_images(exact846):
    x, labels = exact846
    model = M.load_pretrained_cifar_resnet(_shared_weights(20), depth=20)
    _, acc = T.evaluate(model, x, labels, batch_size=256)
    print(f"resnet20 accuracy on the 846 exact CIFAR-10 test images: {acc:.4f}")
    assert acc > 0.9


def test_pretrained_resnet56_accuracy_on_exact_images(exact846, resnet56_probs):
    acc = float(np.mean(resnet56_probs.argmax(axis=1) == exact846[1]))
    print(f"resnet56 accuracy on the 846 exact CIFAR-10 test images: {acc:.4f}")
    assert acc > 0.9


def test_pretrained_resnet56_vs_stored_logits(exact846, resnet56_probs):
    """The stored logits come from chenyaofo's ResNet-56, not akamaster's: compare, do not force equality."""
    _, labels = exact846
    stored, stored_labels = D.load_model_outputs(D.require_shared("logits/cifar10_resnet56_test_logits.npz"))
    probs = resnet56_probs
    np.testing.assert_array_equal(stored_labels[: len(labels)], labels)
    diff = float(np.abs(probs - stored[: len(labels)]).max())
    agree = float(np.mean(probs.argmax(axis=1) == stored[: len(labels)].argmax(axis=1)))
    print(f"resnet56 vs stored logits on 846 images: max |dp| = {diff:.4f}, argmax agreement = {agree:.4f}")
    # two good CIFAR-10 models agree on most images, whatever the checkpoint
    assert agree > 0.85
