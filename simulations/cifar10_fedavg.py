"""Federated training on real CIFAR-10 images, then conformal calibration on the clients' held-out images.

Usage::

    python -m simulations.cifar10_fedavg [--config TOML] [--rounds R] [--images-per-client N]
        [--heldout-per-client N] [--local-epochs E] [--learning-rate LR] [--model NAME] [--threads T]
        [--out DIR | --update-results] [--data-dir DIR]

The preset is ``simulations/conf/cifar10_fedavg.toml`` (command-line options override it). Everything runs in this
process with the library's functions:

1. data: :func:`flwr_gcfcp.app.datasets.cifar10_train_client_splits` (flwr-datasets partition of the shared
   training JPEGs by ``client-classes``; calibration and test images held out from the CIFAR-10 test images);
2. training: FedAvg, each round every client fine-tunes the global model with
   :func:`flwr_gcfcp.app.training.train` and the server averages the state dicts weighted by the clients'
   training-set sizes; the accuracy of the global model on the clients' test images is printed before training
   and after every round;
3. conformal round: each client scores its calibration images with the final model and sends
   :func:`flwr_gcfcp.methods.client_payload`; :func:`flwr_gcfcp.methods.fit_all` fits every method; each client
   builds its sets from :func:`flwr_gcfcp.methods.predictor_arrays` (what the evaluation round sends) and reports
   :func:`flwr_gcfcp.core.metrics.evaluation_counts`, combined with :func:`~flwr_gcfcp.core.metrics.aggregate_counts`.

Outputs ``cifar10_fedavg.json``, ``cifar10_fedavg.md`` and ``cifar10_fedavg_coverage.png`` in ``results/simulations/``
at the repository root (untracked), in ``--out DIR``, or with ``--update-results`` in the committed
``simulations/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simulations.reproduce import output_dir

STEM = "cifar10_fedavg"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "conf" / "cifar10_fedavg.toml"
#: The preset keys this script reads (the rest of the toml, e.g. ``dataset``, is checked or ignored).
KEYS = (
    "model", "images-per-client", "heldout-per-client", "client-classes", "calibration-fraction", "seed",
    "num-server-rounds", "local-epochs", "learning-rate", "batch-size", "alpha", "deltas", "methods", "groups",
    "score", "conservative",
)


def _log(msg: str) -> None:
    print(msg, flush=True)


def load_preset(path: str | Path) -> dict[str, Any]:
    """The preset's keys (``KEYS``), checked to be present; ``dataset`` must be ``"cifar10-train"``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--config {str(path)!r}: preset file not found")
    with p.open("rb") as fh:
        cfg = tomllib.load(fh)
    if cfg.get("dataset") != "cifar10-train":
        raise ValueError(f"--config {str(path)!r}: dataset must be 'cifar10-train', got {cfg.get('dataset')!r}")
    missing = [k for k in KEYS if k not in cfg]
    if missing:
        raise ValueError(f"--config {str(path)!r}: missing keys {missing}")
    return {k: cfg[k] for k in KEYS}


def parse_client_classes(text: str) -> list[list[int]]:
    """``"0,1;2,3"`` or ``"0-4;5-9"`` -> label lists."""
    out: list[list[int]] = []
    for part in str(text).split(";"):
        labels: list[int] = []
        for item in part.split(","):
            item = item.strip()
            if not item:
                continue
            try:
                if "-" in item:
                    lo, hi = (int(t) for t in item.split("-", 1))
                    labels.extend(range(lo, hi + 1))
                else:
                    labels.append(int(item))
            except ValueError as exc:
                raise ValueError(f"client-classes must look like '0,1;2,3' or '0-4;5-9', got {text!r}") from exc
        if not labels:
            raise ValueError(f"client-classes must give every client at least one label, got {text!r}")
        out.append(labels)
    return out


def federated_average(states: Sequence[list[np.ndarray]], weights: Sequence[float]) -> list[np.ndarray]:
    """FedAvg of :func:`~flwr_gcfcp.app.models.get_weights` lists: the weighted mean of every entry in float64, cast
    back to its dtype (integer buffers such as BatchNorm's ``num_batches_tracked`` are rounded)."""
    w = np.asarray(weights, dtype=np.float64)
    if len(states) == 0 or len(w) != len(states) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"need one non-negative weight per state (not all 0), got {len(states)} states, weights {w}")
    w = w / w.sum()
    out = []
    for entries in zip(*states):
        mean = sum(wk * np.asarray(e, dtype=np.float64) for wk, e in zip(w, entries))
        ref = np.asarray(entries[0])
        out.append(np.rint(mean).astype(ref.dtype) if np.issubdtype(ref.dtype, np.integer) else mean.astype(ref.dtype))
    return out


def _accuracy(model, clients, split: str, threads: int) -> dict[str, Any]:
    """Accuracy of ``model`` on every client's ``split`` ("test" or "cal"): pooled and per client."""
    from flwr_gcfcp.app.training import predict_logits

    correct, total, per_client = 0, 0, []
    for c in clients:
        x, y = c[f"x_{split}"], c[f"y_{split}"]
        hit = int(np.sum(predict_logits(model, x, num_threads=threads).argmax(axis=1) == y))
        correct += hit
        total += len(y)
        per_client.append(hit / len(y))
    return {"accuracy": correct / total, "client_accuracy": per_client, "n": total}


def run(cfg: dict[str, Any], threads: int, data_dir: Path | None = None) -> dict[str, Any]:
    """Run the preset: data, FedAvg rounds, conformal calibration and evaluation; return the report."""
    import torch

    from flwr_gcfcp.app import datasets as D
    from flwr_gcfcp.app.models import cifar_transform, get_weights, make_cifar10_model, set_weights
    from flwr_gcfcp.app.training import predict_proba, set_torch_threads, train
    from flwr_gcfcp.core.groups import parse_groups
    from flwr_gcfcp.core.metrics import aggregate_counts, evaluation_counts
    from flwr_gcfcp.core.scores import make_score
    from flwr_gcfcp.methods import (
        client_payload, fit_all, make_calibrators, predictor_arrays, set_mask_from_arrays, thresholds_from_arrays,
    )

    t_start, cpu_start = time.perf_counter(), time.process_time()
    timings: dict[str, Any] = {}
    set_torch_threads(threads)
    classes = parse_client_classes(cfg["client-classes"])
    n_clients = len(classes)
    seed = int(cfg["seed"])
    rounds = int(cfg["num-server-rounds"])
    if rounds < 0:
        raise ValueError(f"num-server-rounds must be >= 0, got {rounds}")
    root = Path(data_dir) if data_dir is not None else D.shared_data_dir()

    # ---- data
    t = time.perf_counter()
    splits = D.cifar10_train_client_splits(
        classes, int(cfg["images-per-client"]), calibration_fraction=float(cfg["calibration-fraction"]),
        heldout_per_client=int(cfg["heldout-per-client"]), seed=seed,
        train_path=root / D.CIFAR10_TRAIN_FILE, test_path=root / D.CIFAR10_TEST_FILE,
    )
    clients = [
        {"x_train": cifar_transform(s.x_train), "y_train": s.y_train, "x_cal": cifar_transform(s.x_cal),
         "y_cal": s.y_cal, "x_test": cifar_transform(s.x_test), "y_test": s.y_test}
        for s in splits
    ]
    timings["data_s"] = time.perf_counter() - t
    sizes = [{"train": len(c["y_train"]), "cal": len(c["y_cal"]), "test": len(c["y_test"])} for c in clients]
    _log(f"[data] {n_clients} clients {classes}: images (train/cal/test) "
         + ", ".join(f"{s['train']}/{s['cal']}/{s['test']}" for s in sizes) + f" ({timings['data_s']:.1f} s)")

    # ---- FedAvg
    weights_path = root / "weights" / "resnet20-12fca82f.th" if cfg["model"] == "resnet20-pretrained" else None
    model = make_cifar10_model(cfg["model"], seed=seed, weights_path=weights_path)
    global_w = get_weights(model)
    t = time.perf_counter()
    history = [{"round": 0, **_accuracy(model, clients, "test", threads), "train_loss": None, "seconds": 0.0}]
    _log(f"[round 0/{rounds}] accuracy before training {history[0]['accuracy']:.4f} on {history[0]['n']} test images "
         f"({time.perf_counter() - t:.1f} s)")
    local = make_cifar10_model(cfg["model"], seed=seed, weights_path=weights_path)
    for r in range(1, rounds + 1):
        t = time.perf_counter()
        states, losses = [], []
        for k, c in enumerate(clients):
            tk = time.perf_counter()
            set_weights(local, global_w)
            loss = train(
                local, c["x_train"], c["y_train"], epochs=int(cfg["local-epochs"]), lr=float(cfg["learning-rate"]),
                batch_size=int(cfg["batch-size"]), seed=seed * 100_003 + r * 101 + k, momentum=0.9,
                weight_decay=5e-4, num_threads=threads, augment=True,
            )
            states.append(get_weights(local))
            losses.append(loss)
            _log(f"  [round {r}/{rounds}] client {k + 1}/{n_clients}: {len(c['y_train'])} images, "
                 f"loss {loss:.4f} ({time.perf_counter() - tk:.1f} s)")
        global_w = federated_average(states, [len(c["y_train"]) for c in clients])
        set_weights(model, global_w)
        acc = _accuracy(model, clients, "test", threads)
        history.append({"round": r, **acc, "train_loss": float(np.mean(losses)), "seconds": time.perf_counter() - t})
        _log(f"[round {r}/{rounds}] accuracy {acc['accuracy']:.4f} (before training {history[0]['accuracy']:.4f}); "
             f"mean local loss {np.mean(losses):.4f} ({history[-1]['seconds']:.1f} s)")
    timings["training_s"] = sum(h["seconds"] for h in history)

    # ---- conformal round (calibration) and evaluation round
    t = time.perf_counter()
    alpha = float(cfg["alpha"])
    deltas = [float(d) for d in str(cfg["deltas"]).split(",") if d.strip()]
    groups = parse_groups(cfg["groups"], n_labels=10)
    calibrators = make_calibrators(
        [m.strip() for m in str(cfg["methods"]).split(",") if m.strip()], groups, alpha, deltas=deltas,
        conservative=bool(cfg["conservative"]), n_classes=10,
    )
    score = make_score(cfg["score"])
    payloads, tests = {}, {}
    for k, c in enumerate(clients):
        cid = f"client{k}"
        rngs = [np.random.default_rng([seed, k, i]) for i in (1, 2, 3)]  # cal scores, test scores, method splits
        probs_cal = predict_proba(model, c["x_cal"], num_threads=threads)
        scores = score.calibration_scores(probs_cal, c["y_cal"], rng=rngs[0])
        payloads[cid] = client_payload(
            calibrators, scores, probs_cal, pi_k=1.0 / n_clients, n_clients=n_clients,
            labels=c["y_cal"], probs=probs_cal, rng=rngs[2],
        )
        probs_test = predict_proba(model, c["x_test"], num_threads=threads)
        tests[cid] = (probs_test, score.score_matrix(probs_test, rng=rngs[1]), c["y_test"])
        _log(f"  [conformal] client {k + 1}/{n_clients}: scored {len(c['y_cal'])} calibration and "
             f"{len(c['y_test'])} test images")
    fit = fit_all(calibrators, payloads)
    if fit.excluded or fit.failed_methods:
        raise RuntimeError(f"calibration failed: excluded {fit.excluded}, failed methods {fit.failed_methods}")
    methods_report: dict[str, Any] = {}
    for name, cal in fit.calibrators.items():
        arrays = predictor_arrays(cal)
        counts = {}
        for cid, (probs_test, smat, y) in tests.items():
            if "rule" in arrays:
                mask = set_mask_from_arrays(arrays, smat, probs_test, groups, probs=probs_test)
            else:
                mask = smat <= thresholds_from_arrays(arrays, probs_test, groups)[:, None]
            counts[cid] = evaluation_counts(mask, y, groups.membership(probs_test))
        agg = aggregate_counts(counts, fit.pi)
        agg.pop("clients")
        methods_report[name] = {**agg, "private": bool(getattr(cal, "private", True))}
    timings["conformal_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start
    timings["cpu_s"] = time.process_time() - cpu_start  # CPU seconds of this process (all threads)
    _log(f"[conformal] {len(methods_report)} methods calibrated and evaluated ({timings['conformal_s']:.1f} s)")
    return {
        "experiment": STEM,
        "dataset": "cifar10-train",
        "alpha": alpha,
        "target_coverage": 1.0 - alpha,
        "set_size_label": "set size",
        "groups": {"text": cfg["groups"], "names": list(groups.names)},
        "config": dict(cfg),
        "clients": [{"classes": cl, **sz} for cl, sz in zip(classes, sizes)],
        "accuracy_before": history[0]["accuracy"],
        "accuracy_after": history[-1]["accuracy"],
        "rounds": history,
        "methods": methods_report,
        "timings": timings,
        "torch_threads": torch.get_num_threads(),
    }


def write_outputs(report: dict[str, Any], out: Path) -> dict[str, str]:
    """``cifar10_fedavg.json``, ``.md`` (accuracy per round, the conformal table) and ``_coverage.png`` in ``out``."""
    from flwr_gcfcp.core.metrics import to_jsonable
    from flwr_gcfcp.flower.reporting import format_table, plot_coverage

    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / f"{STEM}.json", "markdown": out / f"{STEM}.md", "plot": out / f"{STEM}_coverage.png"}
    cfg, tim = report["config"], report["timings"]
    lines = [
        "# Federated training on CIFAR-10 images, then conformal calibration\n",
        f"Command: `{report['command']}`\n",
        f"Model {cfg['model']}, {len(report['clients'])} clients holding true classes {cfg['client-classes']}, "
        f"{cfg['images-per-client']} training images per client (shared JPEG q75 training images), "
        f"{cfg['num-server-rounds']} FedAvg rounds of {cfg['local-epochs']} local epoch(s) (SGD lr "
        f"{cfg['learning-rate']}, momentum 0.9, weight decay 5e-4, batch {cfg['batch-size']}, random crop + flip; "
        "state dicts averaged weighted by training images). Calibration/test images held out from the client's "
        f"classes in the CIFAR-10 test images (calibration fraction {cfg['calibration-fraction']}). Groups "
        f"(predicted label) {cfg['groups']}, score {cfg['score']}, δ = {cfg['deltas']}, π uniform.\n",
        f"Wall time {tim['total_s']:.0f} s (data {tim['data_s']:.0f} s, training and per-round evaluation "
        f"{tim['training_s']:.0f} s, conformal rounds {tim['conformal_s']:.0f} s) and {tim['cpu_s']:.0f} CPU seconds "
        f"with {report['torch_threads']} torch thread(s); machine: {report['machine']}.\n",
        "## Accuracy of the global model on the clients' test images\n",
        "| round | accuracy | " + " | ".join(f"client {k + 1}" for k in range(len(report["clients"])))
        + " | mean local loss | seconds |",
        "|" + "---|" * (len(report["clients"]) + 4),
    ]
    for h in report["rounds"]:
        loss = "-" if h["train_loss"] is None else f"{h['train_loss']:.4f}"
        lines.append(f"| {h['round']} | {h['accuracy']:.4f} | "
                     + " | ".join(f"{a:.4f}" for a in h["client_accuracy"]) + f" | {loss} | {h['seconds']:.1f} |")
    lines += ["", "## Conformal sets of the trained model (coverage and set size on the test images)", "",
              format_table(report)]
    files["markdown"].write_text("\n".join(lines))
    plot_coverage(report, files["plot"], dataset="CIFAR-10 (FedAvg-trained " + cfg["model"] + ")",
                  deltas=cfg["deltas"])
    files["json"].write_text(json.dumps(to_jsonable(report), indent=1, allow_nan=False) + "\n")
    return {k: str(v) for k, v in files.items()}


def _machine() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return f"{os.cpu_count()} CPU cores, load average {load[0]:.1f} at the end (other jobs shared the cores)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simulations.cifar10_fedavg", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="preset toml (default %(default)s)")
    p.add_argument("--rounds", type=int, default=None, help="num-server-rounds")
    p.add_argument("--images-per-client", type=int, default=None)
    p.add_argument("--heldout-per-client", type=int, default=None)
    p.add_argument("--local-epochs", type=int, default=None)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--model", default=None, help="resnet20-pretrained | resnet20 | smallcnn")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1; on the busy 2-core machine 2 threads took several times the CPU)")
    p.add_argument("--data-dir", default=None, help="shared data folder (default $FLWR_GCFCP_DATA or ../shared/data)")
    p.add_argument("--out", default=None, help="output folder (default results/simulations/, untracked)")
    p.add_argument("--update-results", action="store_true", help="write to the committed simulations/results/")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = "python -m simulations.cifar10_fedavg " + " ".join(shlex.quote(a) for a in given)
    cfg = load_preset(args.config)
    for key, value in (("num-server-rounds", args.rounds), ("images-per-client", args.images_per_client),
                       ("heldout-per-client", args.heldout_per_client), ("local-epochs", args.local_epochs),
                       ("learning-rate", args.learning_rate), ("model", args.model), ("seed", args.seed)):
        if value is not None:
            cfg[key] = value
    try:
        out = output_dir(args.out, args.update_results)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        report = run(cfg, threads=args.threads, data_dir=Path(args.data_dir) if args.data_dir else None)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report["command"] = command.strip()
    report["machine"] = _machine()
    files = write_outputs(report, out)
    _log(f"accuracy before {report['accuracy_before']:.4f}, after {report['accuracy_after']:.4f}")
    for name, m in report["methods"].items():
        _log(f"{name:>22}: coverage {m['marginal_coverage']:.3f}, size {m['marginal_set_size']:.2f}; per group "
             + ", ".join(f"{g} {c:.3f} ({s:.2f})" for g, c, s in
                         zip(report["groups"]["names"], m["group_coverage"], m["group_set_size"])))
    _log(f"wall time {report['timings']['total_s']:.1f} s ({report['timings']['cpu_s']:.1f} CPU s); "
         f"outputs: {', '.join(files.values())}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
