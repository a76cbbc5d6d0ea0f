"""Datasets, federated partitions and loaders for model outputs.

This module imports neither torch nor torchvision at import time: the torchvision loader imports it lazily.

Contents
--------
- :func:`load_digits_dataset`: scikit-learn's bundled 8x8 digits as a local :class:`datasets.Dataset`
  (no download), the embedded data set of the quick-start run.
- Federated partitions built with ``flwr-datasets`` partitioners on a local :class:`datasets.Dataset`:
  :func:`partition_by_client_classes` (explicit label sets per client, the GC-FCP paper's split) and
  :func:`dirichlet_partition` (label skew for class-conditional experiments), and the per-client
  :func:`split_train_calibration`.
- Loaders of real data that never download at run time and take paths as arguments:
  :func:`load_cifar10_torchvision`, :func:`load_cifar10_npz`, :func:`decode_jpeg_bytes_npz`,
  :func:`load_pathmnist_npz`, :func:`load_model_outputs`.
- Federated CIFAR-10 training data: :func:`load_cifar10_train_dataset` (the shared training JPEGs as a
  partitionable :class:`datasets.Dataset`) and :func:`cifar10_train_client_splits` (per client: training images
  of its classes, plus calibration and test images held out from the CIFAR-10 test set).
- :func:`shared_data_dir` and :func:`require_shared` locate the project's shared data folder (an explicit
  ``data-dir``, the ``FLWR_GCFCP_DATA`` environment variable, or ``../shared/data`` next to the package's source
  checkout, also when Flower runs the app from its copy under ``$FLWR_HOME/apps``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.special

__all__ = [
    "DATA_ENV_VAR",
    "X_COLUMN",
    "LABEL_COLUMN",
    "load_digits_dataset",
    "arrays_to_dataset",
    "dataset_to_numpy",
    "partition_by_client_classes",
    "dirichlet_partition",
    "split_train_calibration",
    "load_cifar10_torchvision",
    "load_cifar10_npz",
    "decode_jpeg_bytes_npz",
    "load_pathmnist_npz",
    "load_model_outputs",
    "CIFAR10_TRAIN_FILE",
    "CIFAR10_TEST_FILE",
    "load_cifar10_train_dataset",
    "ImageClientSplit",
    "cifar10_train_client_splits",
    "data_dir_candidates",
    "shared_data_dir",
    "require_shared",
]

#: Environment variable that overrides the location of the shared data folder.
DATA_ENV_VAR = "FLWR_GCFCP_DATA"
#: Column holding the model input in the datasets built here.
X_COLUMN = "x"
#: Column holding the integer class label in the datasets built here.
LABEL_COLUMN = "label"
#: Column holding each example's row index in the original data set.
INDEX_COLUMN = "index"

_PATHMNIST_SPLITS = ("train", "val", "test")
_OUTPUT_KEYS = ("logits", "probs", "log_probs")


# ----------------------------------------------------------------------------------------------
# Shared data folder
# ----------------------------------------------------------------------------------------------
def data_dir_candidates(data_dir: str | os.PathLike[str] | None = None) -> list[tuple[str, Path]]:
    """Where the shared data folder is looked for, in order, each with how it was chosen.

    An explicit ``data_dir`` (the run config's ``data-dir``) is the only candidate when given, as is
    ``$FLWR_GCFCP_DATA`` when set. Otherwise ``../shared/data`` next to the repository checkout of this package's
    source: first the checkout this module is imported from, then the source directory recorded by pip for the
    installed ``flwr-gcfcp`` distribution (``direct_url.json``). The second matters under ``flwr run``, whose apps
    import this package from a copy under ``$FLWR_HOME/apps/``, far from the checkout.
    """
    if data_dir is not None and str(data_dir).strip():
        return [("data-dir", Path(str(data_dir).strip()).expanduser())]
    env = os.environ.get(DATA_ENV_VAR, "").strip()
    if env:
        return [(DATA_ENV_VAR, Path(env).expanduser())]
    out = [("this package's checkout", Path(__file__).resolve().parents[2].parent / "shared" / "data")]
    source = _installed_source_dir()
    if source is not None:
        cand = source.parent / "shared" / "data"
        if all(cand != p for _, p in out):
            out.append(("the installed flwr-gcfcp's source directory", cand))
    return out


def _installed_source_dir() -> Path | None:
    """The local directory the ``flwr-gcfcp`` distribution was installed from (``pip install -e .``), if any."""
    import importlib.metadata
    import json
    from urllib.parse import unquote, urlparse

    try:
        text = importlib.metadata.distribution("flwr-gcfcp").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None
    if not text:
        return None
    url = urlparse(str(json.loads(text).get("url", "")))
    if url.scheme != "file":
        return None
    return Path(unquote(url.path)).resolve()


def shared_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder holding the project's shared (non-redistributable) data.

    Parameters
    ----------
    data_dir : str or path-like, optional
        An explicit folder (the run config's ``data-dir``); it wins over everything else.

    Returns
    -------
    pathlib.Path
        The first existing folder of :func:`data_dir_candidates` (``data_dir``, ``$FLWR_GCFCP_DATA``, or
        ``../shared/data`` next to the package's source checkout); the first candidate when none exists (the
        folder may not exist, e.g. on a user's machine).
    """
    candidates = data_dir_candidates(data_dir)
    return next((p for _, p in candidates if p.is_dir()), candidates[0][1])


def require_shared(
    relpath: str | os.PathLike[str], skip: bool = True, data_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Return ``shared_data_dir(data_dir) / relpath``, skipping the calling test when it is absent.

    Parameters
    ----------
    relpath : str or path-like
        Path relative to :func:`shared_data_dir` (e.g. ``"logits/cifar10_resnet56_test_logits.npz"``).
    skip : bool, default True
        When the file is missing, call ``pytest.skip`` with a message naming the path (for tests);
        with ``skip=False`` raise :class:`FileNotFoundError` instead.
    data_dir : str or path-like, optional
        An explicit shared data folder (the run config's ``data-dir``).

    Returns
    -------
    pathlib.Path
        The existing path.
    """
    candidates = data_dir_candidates(data_dir)
    for _, folder in candidates:
        if (folder / Path(relpath)).exists():
            return folder / Path(relpath)
    looked = "; ".join(f"{str(folder / Path(relpath))!r} ({how})" for how, folder in candidates)
    message = (
        f"shared data file {str(relpath)!r} not found; looked at {looked}. Pass the folder holding the shared data "
        f"as the run config's data-dir (absolute) or set {DATA_ENV_VAR} (see ../shared/data/README.md)"
    )
    if skip:
        import pytest  # lazy: only tests use the skipping form

        pytest.skip(message)
    raise FileNotFoundError(message)


def _existing_file(path: str | os.PathLike[str], what: str, name: str = "path") -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"{name}={str(path)!r}: {what} not found (this loader never downloads; "
            "pass the path of an existing local file)"
        )
    return p


# ----------------------------------------------------------------------------------------------
# Local datasets.Dataset helpers
# ----------------------------------------------------------------------------------------------
def arrays_to_dataset(x: np.ndarray, y: np.ndarray, n_classes: int | None = None) -> Any:
    """Build a :class:`datasets.Dataset` with columns ``x`` (float32 array), ``label``, ``index``.

    Parameters
    ----------
    x : np.ndarray
        Inputs, shape ``(n, ...)`` with 1 to 4 trailing dimensions; stored as float32 unless uint8.
    y : np.ndarray
        Integer labels, shape ``(n,)``.
    n_classes : int, optional
        Number of classes; when given, ``label`` is a ``ClassLabel`` feature and labels are checked
        to lie in ``[0, n_classes)``.

    Returns
    -------
    datasets.Dataset
    """
    import datasets

    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 2 or x.ndim > 5:
        raise ValueError(f"x must have shape (n, ...) with 1 to 4 trailing dims, got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"y must have shape ({len(x)},) to match x, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must hold integer labels, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
    dtype = "uint8" if x.dtype == np.uint8 else "float32"
    shape = tuple(int(s) for s in x.shape[1:])
    array_feature = {
        1: None,
        2: datasets.Array2D,
        3: datasets.Array3D,
        4: datasets.Array4D,
    }[len(shape)]
    x_feature = (
        datasets.Sequence(datasets.Value(dtype), length=shape[0])
        if array_feature is None
        else array_feature(shape=shape, dtype=dtype)
    )
    if n_classes is not None:
        if int(n_classes) < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes!r}")
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"y must lie in [0, {n_classes}), got range [{y.min()}, {y.max()}]")
        label_feature = datasets.ClassLabel(num_classes=int(n_classes))
    else:
        label_feature = datasets.Value("int64")
    features = datasets.Features(
        {X_COLUMN: x_feature, LABEL_COLUMN: label_feature, INDEX_COLUMN: datasets.Value("int64")}
    )
    return datasets.Dataset.from_dict(
        {X_COLUMN: x, LABEL_COLUMN: y, INDEX_COLUMN: np.arange(len(y), dtype=np.int64)},
        features=features,
    )


def load_digits_dataset() -> Any:
    """Load scikit-learn's bundled 8x8 digits as a local :class:`datasets.Dataset` (no download).

    Returns
    -------
    datasets.Dataset
        1797 rows; ``x`` float32 of shape ``(1, 8, 8)`` with values in ``[0, 1]`` (pixel / 16),
        ``label`` in ``0..9`` (``ClassLabel``), ``index`` the row in scikit-learn's array.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0)
    x = images.reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    return arrays_to_dataset(x, y, n_classes=10)


def dataset_to_numpy(
    dataset: Any, x_column: str = X_COLUMN, label_column: str = LABEL_COLUMN
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x, y)`` numpy arrays of a :class:`datasets.Dataset`.

    Slices before reading columns (``ds.with_format("numpy")[:]``), as datasets 4.x requires for
    array columns.

    Parameters
    ----------
    dataset : datasets.Dataset
    x_column, label_column : str
        Column names.

    Returns
    -------
    x : np.ndarray
        Stacked inputs (float32 for the datasets built here), shape ``(n, ...)``.
    y : np.ndarray
        int64 labels, shape ``(n,)``.
    """
    for name, col in (("x_column", x_column), ("label_column", label_column)):
        if col not in dataset.column_names:
            raise ValueError(f"{name}={col!r} is not a column of the dataset (columns: {dataset.column_names})")
    if len(dataset) == 0:
        feature = dataset.features[x_column]
        shape = tuple(getattr(feature, "shape", ()) or ())
        dtype = np.dtype(getattr(feature, "dtype", "float32"))
        return np.zeros((0, *shape), dtype=dtype), np.zeros(0, dtype=np.int64)
    table = dataset.with_format("numpy")[:]
    x = np.asarray(table[x_column])
    y = np.asarray(table[label_column]).astype(np.int64)
    return x, y


# ----------------------------------------------------------------------------------------------
# Partitions (flwr-datasets)
# ----------------------------------------------------------------------------------------------
_CLIENT_COLUMN = "_gcfcp_client"


def _check_seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def partition_by_client_classes(
    dataset: Any,
    client_classes: Sequence[Sequence[int]],
    seed: int = 0,
    label_column: str = LABEL_COLUMN,
    shuffle: bool = True,
) -> list[Any]:
    """Split a dataset so that client ``k`` holds exactly the examples whose label is in ``client_classes[k]``.

    This is the label-skewed split of the GC-FCP paper (5 clients holding ``{0,1}, {2,3}, ..., {8,9}``).
    It uses flwr-datasets' built-in :class:`~flwr_datasets.partitioner.NaturalIdPartitioner` on a derived
    column holding each example's client id; ``PathologicalPartitioner`` cannot express an explicit class list
    (its deterministic modes assign overlapping windows ``(k + i) % L`` and split each class between the
    partitions that share it).

    Parameters
    ----------
    dataset : datasets.Dataset
        Must have an integer ``label_column``.
    client_classes : sequence of sequences of int
        One non-empty label set per client; the sets must be disjoint (a label held by two clients would
        make "exactly" ambiguous). Labels in no set are dropped.
    seed : int, default 0
        Seed of the within-client shuffle.
    label_column : str, default "label"
    shuffle : bool, default True
        Shuffle each client's examples (deterministically from ``seed``); otherwise keep dataset order.

    Returns
    -------
    list of datasets.Dataset
        One dataset per client, in the order of ``client_classes`` (possibly empty when none of the
        client's labels occurs), with the original columns.
    """
    from flwr_datasets.partitioner import NaturalIdPartitioner

    seed = _check_seed(seed)
    if label_column not in dataset.column_names:
        raise ValueError(f"label_column={label_column!r} is not a column of the dataset ({dataset.column_names})")
    if isinstance(client_classes, (str, bytes)) or len(client_classes) == 0:
        raise ValueError(f"client_classes must be a non-empty list of label lists, got {client_classes!r}")
    label_to_client: dict[int, int] = {}
    for k, labels in enumerate(client_classes):
        if isinstance(labels, (str, bytes, int, np.integer)) or len(labels) == 0:
            raise ValueError(f"client_classes[{k}] must be a non-empty list of int labels, got {labels!r}")
        for lab in labels:
            if isinstance(lab, (bool, np.bool_)) or not isinstance(lab, (int, np.integer)):
                raise ValueError(f"client_classes[{k}] must hold int labels, got {lab!r}")
            lab = int(lab)
            if lab in label_to_client and label_to_client[lab] != k:
                raise ValueError(
                    f"client_classes: label {lab} is given to clients {label_to_client[lab]} and {k}; "
                    "the label sets must be disjoint"
                )
            label_to_client[lab] = k

    labels_arr = np.asarray(dataset.with_format("numpy")[:][label_column]).astype(np.int64)
    client_ids = np.array([label_to_client.get(int(v), -1) for v in labels_arr], dtype=np.int64)
    kept = np.flatnonzero(client_ids >= 0)
    tagged = dataset.add_column(_CLIENT_COLUMN, client_ids.tolist()).select(kept)

    partitioner = NaturalIdPartitioner(partition_by=_CLIENT_COLUMN)
    partitioner.dataset = tagged
    natural_to_pid: dict[int, int] = {}
    if len(tagged):
        _ = partitioner.num_partitions  # builds the partition id <-> natural id maps (sorted natural ids)
        natural_to_pid = {int(nat): pid for pid, nat in partitioner.partition_id_to_natural_id.items()}

    empty = dataset.select([])
    rng = np.random.default_rng(seed)
    parts: list[Any] = []
    for k in range(len(client_classes)):
        if k not in natural_to_pid:
            parts.append(empty)
            continue
        part = partitioner.load_partition(natural_to_pid[k]).remove_columns(_CLIENT_COLUMN)
        if shuffle and len(part) > 1:
            part = part.select(rng.permutation(len(part)))
        parts.append(part)
    return parts


def dirichlet_partition(
    dataset: Any,
    num_partitions: int,
    alpha: float,
    seed: int = 0,
    label_column: str = LABEL_COLUMN,
    min_partition_size: int = 10,
    self_balancing: bool = False,
) -> list[Any]:
    """Label-skewed partitions from flwr-datasets' :class:`~flwr_datasets.partitioner.DirichletPartitioner`.

    Parameters
    ----------
    dataset : datasets.Dataset
    num_partitions : int
        Number of clients (>= 1).
    alpha : float
        Concentration of the per-class Dirichlet over clients (> 0; small = strong skew).
    seed : int, default 0
    label_column : str, default "label"
    min_partition_size : int, default 10
        The partitioner resamples until every partition has at least this many examples.
    self_balancing : bool, default False
        Passed to ``DirichletPartitioner``.

    Returns
    -------
    list of datasets.Dataset
        ``num_partitions`` disjoint datasets whose union is ``dataset``.
    """
    from flwr_datasets.partitioner import DirichletPartitioner

    seed = _check_seed(seed)
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, (int, np.integer)) or num_partitions < 1:
        raise ValueError(f"num_partitions must be an integer >= 1, got {num_partitions!r}")
    if isinstance(alpha, bool) or not np.isfinite(float(alpha)) or float(alpha) <= 0:
        raise ValueError(f"alpha must be a finite float > 0, got {alpha!r}")
    if label_column not in dataset.column_names:
        raise ValueError(f"label_column={label_column!r} is not a column of the dataset ({dataset.column_names})")
    if min_partition_size < 0 or min_partition_size * num_partitions > len(dataset):
        raise ValueError(
            f"min_partition_size={min_partition_size!r} is impossible for {len(dataset)} examples "
            f"over num_partitions={num_partitions}"
        )
    partitioner = DirichletPartitioner(
        num_partitions=int(num_partitions),
        partition_by=label_column,
        alpha=float(alpha),
        min_partition_size=int(min_partition_size),
        self_balancing=self_balancing,
        shuffle=True,
        seed=seed,
    )
    partitioner.dataset = dataset
    return [partitioner.load_partition(i) for i in range(int(num_partitions))]


def split_train_calibration(dataset: Any, calibration_fraction: float, seed: int = 0) -> tuple[Any, Any]:
    """Split one client's dataset into a training part and a calibration part.

    Parameters
    ----------
    dataset : datasets.Dataset
        At least 2 rows.
    calibration_fraction : float
        Fraction in ``(0, 1)`` of rows that go to calibration; the count is ``round(fraction * n)``
        clipped to ``[1, n - 1]``.
    seed : int, default 0
        Seed of the random permutation.

    Returns
    -------
    (train, calibration) : tuple of datasets.Dataset
        Disjoint, covering ``dataset``.
    """
    seed = _check_seed(seed)
    f = float(calibration_fraction)
    if isinstance(calibration_fraction, bool) or not np.isfinite(f) or not 0.0 < f < 1.0:
        raise ValueError(f"calibration_fraction must lie in (0, 1), got {calibration_fraction!r}")
    n = len(dataset)
    if n < 2:
        raise ValueError(f"dataset must have at least 2 rows to split, got {n}")
    n_cal = min(max(int(round(f * n)), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    cal_idx = np.sort(perm[:n_cal])
    train_idx = np.sort(perm[n_cal:])
    return dataset.select(train_idx), dataset.select(cal_idx)


# ----------------------------------------------------------------------------------------------
# CIFAR-10
# ----------------------------------------------------------------------------------------------
def load_cifar10_torchvision(
    root: str | os.PathLike[str], train: bool, verify_md5: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 from a local ``cifar-10-batches-py`` folder with ``torchvision`` (never downloads).

    Parameters
    ----------
    root : str or path-like
        Folder that contains ``cifar-10-batches-py`` (torchvision's layout).
    train : bool
        Training set (50,000 images) when True, test set (10,000) otherwise.
    verify_md5 : bool, default True
        Check the official MD5 sums as torchvision does. ``False`` reads files in the same format that are
        not the official ones (e.g. small test fixtures).

    Returns
    -------
    images : np.ndarray
        uint8, shape ``(N, 32, 32, 3)`` (HWC, RGB).
    labels : np.ndarray
        int64, shape ``(N,)``.
    """
    root_p = Path(root).expanduser()
    folder = root_p / "cifar-10-batches-py"
    files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    missing = [f for f in [*files, "batches.meta"] if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"root={str(root)!r}: CIFAR-10 python batches not found (missing {missing} in {str(folder)!r}); "
            "download cifar-10-python.tar.gz and extract it there (this loader never downloads)"
        )
    from torchvision.datasets import CIFAR10

    cls = CIFAR10 if verify_md5 else _unchecked_cifar10_class()
    try:
        ds = cls(str(root_p), train=bool(train), download=False)
    except RuntimeError as exc:
        raise RuntimeError(
            f"root={str(root)!r}: torchvision rejected the CIFAR-10 files ({exc}); they are not the official "
            "batches (pass verify_md5=False to read files in the same format anyway)"
        ) from exc
    images = np.ascontiguousarray(np.asarray(ds.data, dtype=np.uint8))
    labels = np.asarray(ds.targets, dtype=np.int64)
    return images, labels


def _unchecked_cifar10_class() -> type:
    """torchvision's CIFAR10 without the MD5 checks (same parsing code otherwise)."""
    import pickle

    from torchvision.datasets import CIFAR10

    class _UncheckedCIFAR10(CIFAR10):
        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            with open(path, "rb") as infile:
                self.classes = pickle.load(infile, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return _UncheckedCIFAR10


def decode_jpeg_bytes_npz(
    path: str | os.PathLike[str], indices: Sequence[int] | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decode an npz of concatenated JPEG files (``jpeg_bytes``, ``offsets``, ``labels``) with Pillow.

    Image ``i`` is ``jpeg_bytes[offsets[i]:offsets[i + 1]]``.

    Parameters
    ----------
    path : str or path-like
        E.g. ``cifar10/cifar10_train_jpeg_q75_bytes.npz`` in the shared data.
    indices : sequence of int, optional
        Images to decode (in this order); all by default.

    Returns
    -------
    images : np.ndarray
        uint8, shape ``(n, H, W, 3)`` RGB.
    labels : np.ndarray
        int64, shape ``(n,)``.
    """
    from PIL import Image

    p = _existing_file(path, "JPEG-bytes npz")
    with np.load(p, allow_pickle=False) as z:
        for key in ("jpeg_bytes", "offsets", "labels"):
            if key not in z.files:
                raise ValueError(f"path={str(path)!r}: missing key {key!r} (keys: {z.files})")
        blob = z["jpeg_bytes"]
        offsets = z["offsets"].astype(np.int64)
        labels_all = z["labels"].astype(np.int64)
    n_total = len(offsets) - 1
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise ValueError(f"path={str(path)!r}: jpeg_bytes must be 1-D uint8, got {blob.dtype} {blob.shape}")
    if n_total != len(labels_all) or offsets[0] != 0 or offsets[-1] != len(blob) or np.any(np.diff(offsets) <= 0):
        raise ValueError(
            f"path={str(path)!r}: offsets (length {len(offsets)}) must increase from 0 to len(jpeg_bytes)="
            f"{len(blob)} and have len(labels)+1={len(labels_all) + 1} entries"
        )
    if indices is None:
        idx = np.arange(n_total)
    else:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < -n_total or idx.max() >= n_total):
            raise ValueError(f"indices must lie in [0, {n_total}), got range [{idx.min()}, {idx.max()}]")
        idx = idx % max(n_total, 1)
    images = []
    raw = blob.tobytes()
    for i in idx:
        with Image.open(io.BytesIO(raw[offsets[i] : offsets[i + 1]])) as im:
            images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    if not images:
        return np.zeros((0, 32, 32, 3), dtype=np.uint8), np.zeros(0, dtype=np.int64)
    return np.stack(images), labels_all[idx]


def load_cifar10_npz(
    path: str | os.PathLike[str], indices: Sequence[int] | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 images and labels from one of the shared npz formats.

    Recognised layouts:

    - ``images`` + ``labels`` (e.g. ``cifar10_test_jpeg_q75.npz``);
    - ``images`` + ``labels_all`` (``cifar10_test_exact_prefix846.npz``: the first ``len(images)`` test
      images with exact pixels and all 10,000 labels; the labels are cut to the images);
    - ``jpeg_bytes`` + ``offsets`` + ``labels`` (``cifar10_train_jpeg_q75_bytes.npz``), decoded with
      :func:`decode_jpeg_bytes_npz`.

    Parameters
    ----------
    path : str or path-like
    indices : sequence of int, optional
        Rows to return (all by default); for the JPEG-bytes layout only those images are decoded.

    Returns
    -------
    images : np.ndarray
        uint8, shape ``(n, 32, 32, 3)`` RGB.
    labels : np.ndarray
        int64, shape ``(n,)``.
    """
    p = _existing_file(path, "CIFAR-10 npz")
    with np.load(p, allow_pickle=False) as z:
        keys = set(z.files)
        if "jpeg_bytes" in keys:
            pass
        elif "images" in keys and ("labels" in keys or "labels_all" in keys):
            images = np.asarray(z["images"])
            labels = np.asarray(z["labels"] if "labels" in keys else z["labels_all"][: len(images)])
        else:
            raise ValueError(
                f"path={str(path)!r}: not a CIFAR-10 npz (need 'images' with 'labels' or 'labels_all', "
                f"or 'jpeg_bytes'/'offsets'/'labels'; got keys {sorted(keys)})"
            )
    if "jpeg_bytes" in keys:
        return decode_jpeg_bytes_npz(p, indices)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"path={str(path)!r}: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"path={str(path)!r}: labels shape {labels.shape} does not match {len(images)} images")
    labels = labels.astype(np.int64)
    if indices is not None:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        images, labels = images[idx], labels[idx]
    return images, labels


# ----------------------------------------------------------------------------------------------
# CIFAR-10 federated training data (shared training JPEGs, held-out test images)
# ----------------------------------------------------------------------------------------------
#: The shared CIFAR-10 training images (JPEG bytes), relative to :func:`shared_data_dir`.
CIFAR10_TRAIN_FILE = "cifar10/cifar10_train_jpeg_q75_bytes.npz"
#: The shared CIFAR-10 test images (decoded from JPEG q75 like the training bytes), relative to
#: :func:`shared_data_dir`.
CIFAR10_TEST_FILE = "cifar10/cifar10_test_jpeg_q75.npz"
_CIFAR10_CLASSES = 10


def _cifar10_labels(path: str | os.PathLike[str], name: str) -> np.ndarray:
    """The labels of a CIFAR-10 npz (any layout of :func:`load_cifar10_npz`) without decoding its images."""
    p = _existing_file(path, "CIFAR-10 npz", name=name)
    with np.load(p, allow_pickle=False) as z:
        if "labels" in z.files:
            labels = np.asarray(z["labels"])
        elif "labels_all" in z.files and "images" in z.files:
            labels = np.asarray(z["labels_all"])[: z["images"].shape[0]]
        else:
            raise ValueError(f"{name}={str(path)!r}: no 'labels' (or 'images' + 'labels_all') in {sorted(z.files)}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}={str(path)!r}: labels must be 1-D integers, got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= _CIFAR10_CLASSES):
        raise ValueError(f"{name}={str(path)!r}: labels must lie in [0, 10), got [{labels.min()}, {labels.max()}]")
    return labels


def _label_index_dataset(labels: np.ndarray) -> Any:
    """A :class:`datasets.Dataset` with only ``label`` (``ClassLabel(10)``) and ``index`` (row in the file)."""
    import datasets

    features = datasets.Features(
        {LABEL_COLUMN: datasets.ClassLabel(num_classes=_CIFAR10_CLASSES), INDEX_COLUMN: datasets.Value("int64")}
    )
    return datasets.Dataset.from_dict(
        {LABEL_COLUMN: labels, INDEX_COLUMN: np.arange(len(labels), dtype=np.int64)}, features=features
    )


def load_cifar10_train_dataset(path: str | os.PathLike[str] | None = None, decode: bool = True) -> Any:
    """The shared CIFAR-10 training images as a local :class:`datasets.Dataset` that flwr-datasets can partition.

    Parameters
    ----------
    path : str or path-like, optional
        The JPEG-bytes npz (``jpeg_bytes``, ``offsets``, ``labels``); default
        ``shared_data_dir() / CIFAR10_TRAIN_FILE``. Never downloaded.
    decode : bool, default True
        Decode every image (50,000 for the shared file) into an ``x`` column. With ``False`` the dataset holds only
        ``label`` and ``index``: partition it (e.g. :func:`partition_by_client_classes`) and decode the chosen rows
        with :func:`decode_jpeg_bytes_npz`, as :func:`cifar10_train_client_splits` does.

    Returns
    -------
    datasets.Dataset
        Columns ``x`` (uint8 ``(32, 32, 3)`` RGB, when ``decode``), ``label`` (``ClassLabel(10)``) and ``index``
        (the image's row in the file).
    """
    p = Path(path) if path is not None else shared_data_dir() / CIFAR10_TRAIN_FILE
    labels = _cifar10_labels(p, "path")
    if not decode:
        return _label_index_dataset(labels)
    images, _ = decode_jpeg_bytes_npz(p)
    return arrays_to_dataset(images, labels, n_classes=_CIFAR10_CLASSES)  # index = row, as decoded in file order


@dataclass(frozen=True)
class ImageClientSplit:
    """One client's CIFAR-10 data: uint8 ``(n, 32, 32, 3)`` RGB images, int64 labels, and each image's row in its
    source file (``*_rows``: training rows in the training file, calibration and test rows in the test file)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_cal: np.ndarray
    y_cal: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_rows: np.ndarray
    cal_rows: np.ndarray
    test_rows: np.ndarray


def _check_count(value: Any, name: str, low: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def cifar10_train_client_splits(
    client_classes: Sequence[Sequence[int]],
    images_per_client: int,
    calibration_fraction: float = 0.5,
    heldout_per_client: int = 0,
    seed: int = 0,
    train_path: str | os.PathLike[str] | None = None,
    test_path: str | os.PathLike[str] | None = None,
    partition_ids: Sequence[int] | None = None,
) -> list[ImageClientSplit]:
    """Label-partitioned clients for federated training on CIFAR-10, with held-out calibration and test images.

    Training images: the shared training file is partitioned by :func:`partition_by_client_classes` (client ``k``
    holds the images whose label is in ``client_classes[k]``, shuffled from ``seed``) and each client keeps the first
    ``images_per_client`` of its partition; only those are decoded. Calibration and test images come from the
    CIFAR-10 *test* file, partitioned the same way, capped at ``heldout_per_client`` and split at random into a
    calibration part (``calibration_fraction``) and a test part. The held-out images are never trained on, neither
    here nor by the shared pretrained ResNets (trained on all 50,000 training images), so calibration and test
    scores are exchangeable; the shared test images are JPEG q75 copies, like the training bytes.

    Parameters
    ----------
    client_classes : sequence of sequences of int
        Disjoint label sets, one per client (e.g. ``[[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]``).
    images_per_client : int
        Training images per client (>= 1); a client whose classes hold fewer keeps them all.
    calibration_fraction : float, default 0.5
        Fraction in ``(0, 1)`` of each client's held-out images that calibrate; the rest test.
    heldout_per_client : int, default 0
        Held-out images per client before the calibration/test split (0: all of the client's test images; else >= 2).
    seed : int, default 0
        Seeds both partitions' shuffles and the calibration/test split.
    train_path, test_path : str or path-like, optional
        Default ``shared_data_dir() / CIFAR10_TRAIN_FILE`` and ``shared_data_dir() / CIFAR10_TEST_FILE``; any
        layout of :func:`load_cifar10_npz` works for either.
    partition_ids : sequence of int, optional
        Return (and decode) only these clients, in this order; all by default (a Flower client needs only its own).

    Returns
    -------
    list of ImageClientSplit
        One per requested client.
    """
    images_per_client = _check_count(images_per_client, "images_per_client", 1)
    heldout_per_client = _check_count(heldout_per_client, "heldout_per_client", 0)
    if heldout_per_client == 1:
        raise ValueError("heldout_per_client must be 0 (all) or >= 2 (one calibration and one test image), got 1")
    seed = _check_seed(seed)
    n_clients = len(client_classes) if not isinstance(client_classes, (str, bytes)) else 0
    ids = list(range(n_clients)) if partition_ids is None else [int(i) for i in partition_ids]
    bad = [i for i in ids if not 0 <= i < n_clients]
    if bad:
        raise ValueError(f"partition_ids must lie in [0, {n_clients}) (one per client_classes entry), got {bad}")
    train_p = Path(train_path) if train_path is not None else shared_data_dir() / CIFAR10_TRAIN_FILE
    test_p = Path(test_path) if test_path is not None else shared_data_dir() / CIFAR10_TEST_FILE
    train_parts = partition_by_client_classes(
        _label_index_dataset(_cifar10_labels(train_p, "train_path")), client_classes, seed=seed
    )
    test_parts = partition_by_client_classes(
        _label_index_dataset(_cifar10_labels(test_p, "test_path")), client_classes, seed=seed + 1
    )
    out = []
    for k in ids:
        train_rows = np.asarray(train_parts[k][INDEX_COLUMN][:images_per_client], dtype=np.int64)
        held = test_parts[k]
        if heldout_per_client:
            held = held.select(range(min(heldout_per_client, len(held))))
        if len(train_rows) == 0 or len(held) < 2:
            raise ValueError(
                f"client_classes[{k}]={list(client_classes[k])!r}: the client holds {len(train_rows)} training and "
                f"{len(held)} held-out images; it needs at least 1 and 2"
            )
        test_part, cal_part = split_train_calibration(held, calibration_fraction, seed=seed + 2)
        cal_rows = np.asarray(cal_part[INDEX_COLUMN], dtype=np.int64)
        test_rows = np.asarray(test_part[INDEX_COLUMN], dtype=np.int64)
        x_train, y_train = load_cifar10_npz(train_p, indices=train_rows)
        x_cal, y_cal = load_cifar10_npz(test_p, indices=cal_rows)
        x_test, y_test = load_cifar10_npz(test_p, indices=test_rows)
        out.append(ImageClientSplit(x_train, y_train, x_cal, y_cal, x_test, y_test, train_rows, cal_rows, test_rows))
    return out


# ----------------------------------------------------------------------------------------------
# PathMNIST
# ----------------------------------------------------------------------------------------------
def load_pathmnist_npz(
    path: str | os.PathLike[str], split: str, use_medmnist: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of MedMNIST's ``pathmnist.npz`` (never downloads).

    Parameters
    ----------
    path : str or path-like
        The ``pathmnist.npz`` file, or a folder containing it.
    split : {"train", "val", "test"}
    use_medmnist : bool, default False
        Read through the ``medmnist`` package (``medmnist.PathMNIST(split, root, download=False)``)
        instead of numpy; raises ImportError when it is not installed.

    Returns
    -------
    images : np.ndarray
        uint8, shape ``(N, 28, 28, 3)``.
    labels : np.ndarray
        int64, shape ``(N,)`` (MedMNIST stores ``(N, 1)``), values ``0..8``.
    """
    if split not in _PATHMNIST_SPLITS:
        raise ValueError(f"split must be one of {_PATHMNIST_SPLITS}, got {split!r}")
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "pathmnist.npz"
    p = _existing_file(p, "PathMNIST npz (MedMNIST's pathmnist.npz)")
    if use_medmnist:
        import medmnist  # optional dependency

        ds = medmnist.PathMNIST(split=split, root=str(p.parent), download=False)
        images, labels = np.asarray(ds.imgs), np.asarray(ds.labels)
    else:
        with np.load(p, allow_pickle=False) as z:
            ik, lk = f"{split}_images", f"{split}_labels"
            if ik not in z.files or lk not in z.files:
                raise ValueError(f"path={str(path)!r}: missing {ik!r}/{lk!r} (keys: {z.files})")
            images, labels = np.asarray(z[ik]), np.asarray(z[lk])
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"path={str(path)!r}: {split}_images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}"
        )
    labels = labels.reshape(len(labels), -1)
    if labels.shape != (len(images), 1):
        raise ValueError(f"path={str(path)!r}: {split}_labels must have shape ({len(images)}, 1), got {labels.shape}")
    return images, labels[:, 0].astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Stored model outputs
# ----------------------------------------------------------------------------------------------
def load_model_outputs(path: str | os.PathLike[str], key: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load stored model outputs as class probabilities.

    The npz holds ``labels`` and one of ``logits`` (softmax in float64 with max subtraction),
    ``probs`` (checked, then renormalised) or ``log_probs`` (``exp`` then renormalised). Renormalising
    matters for the shared PathMNIST file, whose probabilities were clipped at 1e-45 before the log, so
    its rows do not sum to exactly 1.

    Parameters
    ----------
    path : str or path-like
    key : {"logits", "probs", "log_probs"}, optional
        Which array to use; by default the file must hold exactly one of them.

    Returns
    -------
    probs : np.ndarray
        float64, shape ``(n, L)``, non-negative, rows sum to 1.
    labels : np.ndarray
        int64, shape ``(n,)``, in ``[0, L)``.
    """
    p = _existing_file(path, "model-output npz")
    if key is not None and key not in _OUTPUT_KEYS:
        raise ValueError(f"key must be one of {_OUTPUT_KEYS} or None, got {key!r}")
    with np.load(p, allow_pickle=False) as z:
        present = [k for k in _OUTPUT_KEYS if k in z.files]
        if "labels" not in z.files:
            raise ValueError(f"path={str(path)!r}: missing 'labels' (keys: {z.files})")
        if key is None:
            if len(present) != 1:
                raise ValueError(
                    f"path={str(path)!r}: expected exactly one of {_OUTPUT_KEYS}, found {present}; pass key="
                )
            key = present[0]
        elif key not in z.files:
            raise ValueError(f"key={key!r} is not in {str(path)!r} (keys: {z.files})")
        out = np.asarray(z[key], dtype=np.float64)
        labels = np.asarray(z["labels"])
    if out.ndim != 2 or out.shape[0] == 0 or out.shape[1] < 2:
        raise ValueError(f"path={str(path)!r}: {key} must have shape (n, L) with n >= 1, L >= 2, got {out.shape}")
    labels = labels.reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 else labels
    if labels.shape != (out.shape[0],):
        raise ValueError(f"path={str(path)!r}: labels shape {labels.shape} does not match {key} shape {out.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"path={str(path)!r}: labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= out.shape[1]:
        raise ValueError(
            f"path={str(path)!r}: labels must lie in [0, {out.shape[1]}), got [{labels.min()}, {labels.max()}]"
        )

    if key == "logits":
        if not np.all(np.isfinite(out)):
            raise ValueError(f"path={str(path)!r}: logits contain non-finite values")
        probs = scipy.special.softmax(out, axis=1)
    elif key == "log_probs":
        if np.any(np.isnan(out)) or np.any(out == np.inf):
            raise ValueError(f"path={str(path)!r}: log_probs contain NaN or +inf")
        if np.any(out > 1e-6):
            raise ValueError(f"path={str(path)!r}: log_probs must be <= 0, max is {out.max()!r}")
        e = np.exp(np.minimum(out, 0.0))
        s = e.sum(axis=1, keepdims=True)
        if np.any(s <= 0):
            raise ValueError(f"path={str(path)!r}: a row of log_probs has zero total probability")
        probs = e / s
    else:
        if not np.all(np.isfinite(out)) or out.min() < 0 or out.max() > 1 + 1e-6:
            raise ValueError(f"path={str(path)!r}: probs must lie in [0, 1]")
        s = out.sum(axis=1)
        if np.max(np.abs(s - 1.0)) > 1e-3:
            raise ValueError(
                f"path={str(path)!r}: probs rows must sum to 1 (max deviation {np.max(np.abs(s - 1.0))!r})"
            )
        probs = np.clip(out, 0.0, None) / s[:, None]
    return probs, labels
