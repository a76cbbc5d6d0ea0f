"""Regenerate the GC-FCP paper's tables and figures (§6, App. E) by Monte Carlo over stored model outputs.

Usage::

    python -m simulations.reproduce EXPERIMENT [--mc N] [--seed S] [--out DIR | --update-results] [--json PATH]
        [--data-dir DIR]

Outputs go to ``results/simulations/`` at the repository root (untracked: ``results/`` is gitignored) or to
``--out DIR``; only ``--update-results`` writes the committed copies in ``simulations/results/``, so a quick run
(``--mc 5``) never overwrites the results the README quotes.

Experiments
-----------
cifar10-table2    Table 2: ResNet-56 CIFAR-10 test logits, 5000/5000 split, 5 label-skewed clients, groups by
                  predicted label 0-3;2-5;4-7;6-9, score 1 - p_y, α = 0.1, δ ∈ {25, 250, 2500} (with and without
                  the π/δ correction), 50 splits.
pathmnist-table4  Table 4: MedMNIST ResNet-50 PathMNIST test log-probabilities, random halves, clients
                  {0,1},{2,3},{4,5},{6,7},{8}, groups 0-2;1-3;2-4;3-5;4-8.
regression-fig3   Fig. 3 / Table 3: the §6.1 synthetic regression (K = 4, n_1 = 1000, n_k = 333, 200 test points,
                  δ = 250, 100 runs): intervals over x per method (3a/b) and per-group miscoverage (3c).
cifar10-table5    Table 5 (App. E.2): confidence groups on [0.5, 1] with overlapping breakpoints, 5 source clients
                  plus a synthetic target client (2000 draws with replacement from the calibration pool), 2000 test
                  draws from the evaluation pool, 100 runs.
alpha-sweep       Figs 4 and 5: per-group coverage and set size against 1 - α on CIFAR-10 and PathMNIST.
delta-ablation    δ grid (default 25,50,100,250,500,1000,2500), with and without the π/δ correction: per-group
                  coverage, set size, bytes per client, client and server time.
scores            Any model outputs: --logits PATH (npz with labels and logits / probs / log_probs), --groups,
                  --client-classes, --n-cal, --alpha, --deltas, --methods, --score.
class-conditional, set-valued
                  Dispatched to ``simulations.experiments_classcond``.

Every calibration goes through the functions the Flower apps call (``make_calibrators``, ``client_payload``,
``fit_all``, ``evaluation_counts``, ``aggregate_counts``); see ``simulations/mc.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simulations import report
from simulations.mc import (
    Draw,
    classification_draw_fn,
    groupwise_random_thresholds,
    parse_client_classes,
    run_monte_carlo,
    summarize_runs,
)

EXPERIMENTS = (
    "cifar10-table2",
    "pathmnist-table4",
    "regression-fig3",
    "cifar10-table5",
    "alpha-sweep",
    "delta-ablation",
    "scores",
    "class-conditional",
    "set-valued",
)

CIFAR10_LOGITS = "logits/cifar10_resnet56_test_logits.npz"
PATHMNIST_LOGPROBS = "logits/pathmnist_resnet50_test_logprobs.npz"

#: Paper settings per data set.
DATASETS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "file": CIFAR10_LOGITS,
        "groups": "0-3;2-5;4-7;6-9",
        "client_classes": "0,1;2,3;4,5;6,7;8,9",
        "n_cal": 5000,
        "title": "CIFAR-10, ResNet-56",
    },
    "pathmnist": {
        "file": PATHMNIST_LOGPROBS,
        "groups": "0-2;1-3;2-4;3-5;4-8",
        "client_classes": "0,1;2,3;4,5;6,7;8",
        "n_cal": None,  # half of the test split
        "title": "PathMNIST, ResNet-50",
    },
}

PAPER_TABLE2 = {  # Table 2 of the paper: marginal, then (coverage, size) per group
    "split_cp": (0.901, [(0.879, 0.91), (0.855, 0.90), (0.906, 0.93), (0.936, 0.95)]),
    "condcp": (0.903, [(0.901, 0.96), (0.901, 0.98), (0.902, 0.94), (0.901, 0.91)]),
    "centralized_gcfcp": (0.906, [(0.903, 0.96), (0.903, 0.99), (0.905, 0.94), (0.905, 0.92)]),
    "fedcp": (0.902, [(0.880, 0.92), (0.856, 0.90), (0.906, 0.93), (0.936, 0.95)]),
    "gcfcp_delta25": (0.911, [(0.896, 0.95), (0.887, 0.96), (0.919, 0.95), (0.931, 0.95)]),
    "gcfcp_delta250": (0.906, [(0.903, 0.96), (0.902, 0.98), (0.905, 0.94), (0.906, 0.92)]),
    "gcfcp_delta2500": (0.906, [(0.903, 0.96), (0.903, 0.99), (0.905, 0.94), (0.905, 0.92)]),
}


class DataMissingError(FileNotFoundError):
    """A data file an experiment needs is absent."""


#: The committed results (written only with ``--update-results``).
COMMITTED_RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: Default output folder of a run: untracked (``results/`` is gitignored).
UNTRACKED_RESULTS_DIR = Path(__file__).resolve().parent.parent / "results" / "simulations"


def output_dir(out: str | os.PathLike[str] | None, update_results: bool) -> Path:
    """Where a run writes: ``out`` when given, the committed ``simulations/results/`` with ``update_results``,
    else the untracked ``results/simulations/`` at the repository root."""
    if out is not None and update_results:
        raise ValueError(
            f"--out {str(out)!r} and --update-results contradict each other: --update-results writes to "
            f"{str(COMMITTED_RESULTS_DIR)!r}"
        )
    if update_results:
        return COMMITTED_RESULTS_DIR
    return Path(out) if out is not None else UNTRACKED_RESULTS_DIR


# ---------------------------------------------------------------------------------------------------- helpers
def default_data_dir() -> Path:
    env = os.environ.get("FLWR_GCFCP_DATA", "").strip()
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _data_file(data_dir: Path, rel: str, experiment: str) -> Path:
    path = Path(data_dir) / rel
    if not path.is_file():
        raise DataMissingError(
            f"{experiment}: data file {rel!r} not found under data dir {str(data_dir)!r} (looked for {str(path)!r}). "
            "Pass --data-dir DIR or set FLWR_GCFCP_DATA to the folder holding the shared data "
            "(see ../shared/data/README.md), or use `scores --logits PATH` with your own model outputs."
        )
    return path


def load_outputs(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels from an npz with ``labels`` and one of ``logits`` / ``probs`` / ``log_probs``."""
    from flwr_gcfcp.app.datasets import load_model_outputs

    return load_model_outputs(path)


def _score_matrix(probs: np.ndarray, score: str = "softmax", seed: int = 0) -> np.ndarray:
    from flwr_gcfcp.core.scores import make_score

    kwargs = {"seed": seed} if score in ("aps", "raps") else {}
    fn = make_score(score, **kwargs)
    return np.asarray(fn.score_matrix(probs, rng=np.random.default_rng(seed)), dtype=float)


def _parse_floats(text: str | Sequence[float], name: str) -> list[float]:
    if isinstance(text, (list, tuple)):
        return [float(v) for v in text]
    try:
        out = [float(t) for t in str(text).split(",") if t.strip()]
    except ValueError as exc:
        raise ValueError(f"{name} must be comma-separated numbers, got {text!r}") from exc
    if not out:
        raise ValueError(f"{name} must list at least one number, got {text!r}")
    return out


def _parse_methods(text: str) -> list[str]:
    out = [m.strip() for m in str(text).split(",") if m.strip()]
    if not out:
        raise ValueError(f"methods must name at least one method, got {text!r}")
    return out


def default_label_windows(n_labels: int, n_groups: int = 4) -> str:
    """Overlapping windows of predicted labels, like the paper's ``0-3;2-5;4-7;6-9`` for 10 labels."""
    step = max(1, n_labels // (n_groups + 1))
    parts = []
    for g in range(n_groups):
        lo = g * step
        hi = n_labels - 1 if g == n_groups - 1 else min(n_labels - 1, lo + 2 * step - 1)
        parts.append(f"{lo}-{hi}")
    return ";".join(parts)


def default_client_classes(n_labels: int, n_clients: int = 5) -> str:
    chunks = np.array_split(np.arange(n_labels), n_clients)
    return ";".join(",".join(str(int(c)) for c in ch) for ch in chunks if ch.size)


def _features_for(groups_text: str, probs: np.ndarray) -> np.ndarray:
    """What the group definition reads: probabilities for confidence groups, else predicted labels."""
    if groups_text.strip().lower().startswith("confidence"):
        return probs
    return np.argmax(probs, axis=1).astype(np.int64)


def _write_json(payload: dict, path: Path) -> Path:
    from flwr_gcfcp.core.metrics import to_jsonable

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(payload), indent=2, allow_nan=False) + "\n")
    return path


def _command_line(argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return "python -m simulations.reproduce " + " ".join(shlex.quote(a) for a in args)


# ---------------------------------------------------------------------------------------------------- core runs
def run_classification(
    probs: np.ndarray,
    labels: np.ndarray,
    groups_text: str,
    client_classes: str,
    n_cal: int,
    alpha: float,
    methods: Sequence[str],
    deltas: Sequence[float],
    conservative: bool,
    mc: int,
    seed: int,
    score: str = "softmax",
    progress: bool = True,
    desc: str = "",
    mixture_eval: bool = True,
    fedcp_delta: float | None = 250.0,
) -> tuple[dict, list[str], Any]:
    from flwr_gcfcp.core.groups import parse_groups

    n_labels = probs.shape[1]
    groups = parse_groups(groups_text, n_labels=n_labels)
    clients, owner = parse_client_classes(client_classes, n_labels)
    smat = _score_matrix(probs, score, seed)
    features = _features_for(groups_text, probs)
    draw_fn = classification_draw_fn(smat, labels, features, owner, n_cal, len(clients), mixture_eval=mixture_eval)
    result = run_monte_carlo(
        draw_fn, groups, methods, alpha, mc, seed=seed, deltas=deltas, conservative=conservative,
        progress=progress, desc=desc or "Monte Carlo", fedcp_delta=fedcp_delta,
    )
    return summarize_runs(result), result.group_names, result


def conservative_note(deltas: Sequence[float], alpha: float, conservative: bool = True) -> str:
    """Say which π/δ-corrected GC-FCP rows cannot exist (π/δ >= α: the corrected level 1 - α + π/δ reaches 1)."""
    missing = [d for d in deltas if math.pi / d >= alpha]
    if not conservative or not missing:
        return ""
    shown = ", ".join(f"{d:g}" for d in missing)
    return (
        f"GC-FCP +π/δ has no row for δ ∈ {{{shown}}}: there π/δ >= α = {alpha:g}, so the corrected level "
        "1 - α + π/δ is 1 or more (the only valid set is every label); `make_calibrators` leaves it out.\n"
    )


def _base_payload(experiment: str, args, alpha, group_names, settings: dict, methods: dict, command: str) -> dict:
    return {
        "experiment": experiment,
        "alpha": alpha,
        "mc": args.mc,
        "seed": args.seed,
        "command": command,
        "group_names": list(group_names),
        "settings": settings,
        "methods": methods,
    }


def _paper_comparison_table2(summary: dict, group_names: Sequence[str]) -> str:
    lines = [
        "| Method | Marginal (ours / paper) | "
        + " | ".join(f"{g} (ours / paper)" for g in group_names)
        + " |",
        "|" + "---|" * (len(group_names) + 2),
    ]
    for name, (pm, pg) in PAPER_TABLE2.items():
        if name not in summary:
            continue
        row = summary[name]
        cells = [report.display_name(name), f"{row['marginal_coverage']:.3f} / {pm:.3f}"]
        for g, (pc, ps) in enumerate(pg):
            cells.append(
                f"{row['group_coverage'][g]:.3f} ({row['group_set_size'][g]:.2f}) / {pc:.3f} ({ps:.2f})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def exp_label_table(experiment: str, dataset: str, args, command: str) -> dict:
    ds = DATASETS[dataset]
    path = _data_file(args.data_dir, ds["file"], experiment)
    probs, labels = load_outputs(path)
    n_cal = ds["n_cal"] or len(labels) // 2
    deltas = _parse_floats(args.deltas or "25,250,2500", "deltas")
    # Paper: Table 2 has CondCP and centralized GC-FCP; Table 4 (PathMNIST) does not (the five overlapping PathMNIST
    # groups leave a 2-dimensional null space, where the solver falls back to an LP per atom: seconds per fit).
    default_methods = ("split_cp,fedcp,condcp,centralized_gcfcp,gcfcp" if dataset == "cifar10"
                       else "split_cp,fedcp,gcfcp")
    methods = _parse_methods(args.methods or default_methods)
    alpha = args.alpha if args.alpha is not None else 0.1
    summary, group_names, _ = run_classification(
        probs, labels, ds["groups"], ds["client_classes"], n_cal, alpha, methods, deltas,
        not args.no_conservative, args.mc, args.seed, progress=args.progress, desc=experiment,
        fedcp_delta=args.fedcp_delta,
    )
    stem = experiment.replace("-", "_")
    title = f"{ds['title']}: α = {alpha}, {args.mc} Monte Carlo splits"
    table = report.markdown_table(summary, group_names, alpha)
    md = [f"# {experiment}\n", f"{title}. Command: `{command}`\n",
          f"Groups (predicted label): {ds['groups']}; clients (true labels): {ds['client_classes']}; "
          f"n_cal = {n_cal} of {len(labels)}; score 1 - p_y; π_k uniform; FedCP digests at δ = {args.fedcp_delta:g}. "
          "Per-group coverage is measured on the test half, each client's test points (by true label) "
          "combined with the mixture weights π_k (`aggregate_counts`).\n",
          conservative_note(deltas, alpha, not args.no_conservative), table]
    if dataset == "cifar10":
        md += ["\n## Against the paper's Table 2\n", _paper_comparison_table2(summary, group_names)]
    out = Path(args.out)
    (out / f"{stem}.md").parent.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text("\n".join(md))
    report.plot_group_coverage(summary, group_names, alpha, out / f"{stem}_group_coverage.png", title=title)
    payload = _base_payload(
        experiment, args, alpha, group_names,
        {"data": str(path), "groups": ds["groups"], "client_classes": ds["client_classes"], "n_cal": n_cal,
         "n_total": int(len(labels)), "deltas": deltas, "score": "softmax", "pi": "uniform",
         "evaluation": "test half, per-client counts combined with the mixture weights (aggregate_counts)"},
        summary, command,
    )
    _write_json(payload, Path(args.json) if args.json else out / f"{stem}.json")
    print(table)
    return payload


# --------------------------------------------------------------------------------------------------- regression
def exp_regression(args, command: str) -> dict:
    from flwr_gcfcp.core.groups import parse_groups
    from simulations.regression import RegressionSetting, regression_draw_fn

    setting = RegressionSetting()
    alpha = args.alpha if args.alpha is not None else setting.alpha
    deltas = _parse_floats(args.deltas or str(setting.delta), "deltas")
    methods = _parse_methods(args.methods or "split_cp,fedcp,condcp,centralized_gcfcp,gcfcp")
    groups = parse_groups(setting.groups_text)
    draw_fn = regression_draw_fn(setting, train_seed=args.seed + 12345)
    result = run_monte_carlo(
        draw_fn, groups, methods, alpha, args.mc, seed=args.seed, deltas=deltas,
        conservative=not args.no_conservative, progress=args.progress, desc="regression-fig3",
        fedcp_delta=args.fedcp_delta,
    )
    summary = summarize_runs(result)
    for row in summary.values():  # interval width 2 q(x) in place of the set size
        row["group_interval_width"] = [2.0 * v for v in row["group_mean_threshold"]]
    group_names = result.group_names
    out = Path(args.out)
    title = f"Synthetic regression (§6.1): α = {alpha}, {args.mc} runs, 200 test points each"
    table = report.markdown_table(summary, group_names, alpha, size_key="group_interval_width",
                                  size_label="mean interval width 2q(x) over the group's test points")
    model = draw_fn.model
    md = [f"# regression-fig3\n", f"{title}. Command: `{command}`\n",
          f"Linear model f(x) = {model.intercept:.4f} + {model.slope:.4f} x (least squares on 2000 training points "
          f"from the mixture); groups {setting.groups_text}; n_k = {list(setting.n_per_client)}; π_k = 1/4; "
          "coverage is pooled over each run's 200 test points (a sample of the mixture), averaged over runs.\n",
          table]
    (out).mkdir(parents=True, exist_ok=True)
    (out / "regression_fig3.md").write_text("\n".join(md))
    # Fig. 3a/b from the last run's calibrators.
    x_grid = np.linspace(0.0, 5.0, 501)
    f_grid = model.predict(x_grid)
    thr = {}
    for name, cal in result.last_calibrators.items():
        thr[name] = np.asarray(cal.thresholds_for(x_grid), dtype=float)
    d = result.last_draw
    xt, yt = d.extra["x_test"], d.extra["y_test"]
    marginal = {k: v for k, v in thr.items() if k in ("split_cp", "fedcp")}
    conditional = {k: v for k, v in thr.items() if k not in marginal and not k.endswith("_conservative")}
    intervals = [(0, 2), (1, 3), (2, 4), (3, 5)]
    report.plot_regression_intervals(x_grid, f_grid, marginal, xt, yt, out / "regression_fig3a.png", intervals,
                                     title="(a) Centralized CP and FedCP")
    report.plot_regression_intervals(x_grid, f_grid, conditional, xt, yt, out / "regression_fig3b.png", intervals,
                                     title="(b) CondCP, centralized GC-FCP, GC-FCP")
    report.plot_group_miscoverage(summary, group_names, alpha, out / "regression_fig3c.png",
                                  title="(c) Per-group miscoverage (±1.96 SE)")
    payload = _base_payload(
        "regression-fig3", args, alpha, group_names,
        {"setting": setting.__dict__ if hasattr(setting, "__dict__") else str(setting), "deltas": deltas,
         "model": {"intercept": model.intercept, "slope": model.slope},
         "set_size_note": "group_set_size counts the single response column; see group_interval_width"},
        summary, command,
    )
    payload["settings"]["setting"] = {
        "n_clients": setting.n_clients, "n_per_client": list(setting.n_per_client), "n_test": setting.n_test,
        "n_train": setting.n_train, "groups": setting.groups_text,
    }
    _write_json(payload, Path(args.json) if args.json else out / "regression_fig3.json")
    print(table)
    return payload


# ------------------------------------------------------------------------------------------------------ table 5
def table5_draw_fn(smat, labels, probs, owner, n_cal, n_target_cal, n_test, n_clients):
    """Source clients by label from the calibration pool, plus a target client sampled with replacement."""
    n = len(labels)
    cal_scores_all = smat[np.arange(n), labels]
    point_client = owner[labels]

    def draw(rng: np.random.Generator) -> Draw:
        perm = rng.permutation(n)
        pool, evalpool = perm[:n_cal], perm[n_cal:]
        pool = pool[point_client[pool] >= 0]
        target = rng.choice(pool, size=n_target_cal, replace=True)
        test = rng.choice(evalpool, size=n_test, replace=True)
        cal = np.concatenate([pool, target])
        cal_client = np.concatenate([point_client[pool], np.full(n_target_cal, n_clients, dtype=np.int64)])
        return Draw(
            cal_scores=cal_scores_all[cal], cal_features=probs[cal], cal_client=cal_client,
            test_score_matrix=smat[test], test_labels=labels[test], test_features=probs[test], test_client=None,
            n_clients=n_clients + 1,
        )

    return draw


def exp_table5(args, command: str) -> dict:
    from flwr_gcfcp.core.groups import parse_groups

    path = _data_file(args.data_dir, CIFAR10_LOGITS, "cifar10-table5")
    probs, labels = load_outputs(path)
    alpha = args.alpha if args.alpha is not None else 0.1
    deltas = _parse_floats(args.deltas or "250", "deltas")
    methods = _parse_methods(args.methods or "split_cp,fedcp,mondrian,condcp,centralized_gcfcp,gcfcp")
    groups_text = args.groups or "confidence:4+rest"
    groups = parse_groups(groups_text, n_labels=probs.shape[1])
    clients, owner = parse_client_classes(DATASETS["cifar10"]["client_classes"], probs.shape[1])
    smat = _score_matrix(probs)
    draw_fn = table5_draw_fn(smat, labels, probs, owner, 5000, 2000, 2000, len(clients))
    result = run_monte_carlo(
        draw_fn, groups, methods, alpha, args.mc, seed=args.seed, deltas=deltas,
        conservative=not args.no_conservative, progress=args.progress, desc="cifar10-table5",
        extra_methods={"groupwise_random": groupwise_random_thresholds}, fedcp_delta=args.fedcp_delta,
    )
    summary = summarize_runs(result)
    group_names = result.group_names
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"CIFAR-10 confidence groups (App. E.2): α = {alpha}, {args.mc} runs, 2000 test draws each"
    table = report.markdown_table(summary, group_names, alpha)
    conf = probs.max(axis=1)
    md = [
        "# cifar10-table5\n", f"{title}. Command: `{command}`\n",
        f"Groups `{groups_text}` = {', '.join(group_names)} (max-probability intervals on [0.5, 1] with equally "
        f"spaced breakpoints; `rest` holds the {np.mean(conf < 0.5):.1%} of points with confidence below 0.5). "
        "Clients: 5 source clients by true label ({0,1},...,{8,9}) from a 5000-point calibration pool, plus a "
        "target client of 2000 draws with replacement from that pool; π uniform over the 6 clients. Test: 2000 draws "
        "with replacement from the other 5000 points, pooled.\n",
        "Personalized FCP and FedCF (the paper's baselines) are not implemented here. Two group-wise stand-ins: "
        "*Group-wise CP, random overlap tie-break* calibrates each group on its own (federated split CP over the "
        "clients holding points of that group) and gives an overlapping test point the threshold of one of its "
        "groups drawn at random, the construction App. E.2 applies to its baselines; *Mondrian CP* takes the "
        "largest of the point's group thresholds instead.\n",
        table,
    ]
    (out / "cifar10_table5.md").write_text("\n".join(md))
    report.plot_group_coverage(summary, group_names, alpha, out / "cifar10_table5_group_coverage.png", title=title)
    payload = _base_payload(
        "cifar10-table5", args, alpha, group_names,
        {"data": str(path), "groups": groups_text, "source_clients": DATASETS["cifar10"]["client_classes"],
         "n_cal_pool": 5000, "n_target_cal": 2000, "n_test": 2000, "pi": "uniform over 6 clients"},
        summary, command,
    )
    _write_json(payload, Path(args.json) if args.json else out / "cifar10_table5.json")
    print(table)
    return payload


# --------------------------------------------------------------------------------------------------- alpha sweep
def exp_alpha_sweep(args, command: str) -> dict:
    datasets = ["cifar10", "pathmnist"] if args.dataset in (None, "both") else [args.dataset]
    alphas = _parse_floats(args.alphas or "0.3,0.25,0.2,0.15,0.1,0.05", "alphas")
    deltas = _parse_floats(args.deltas or "250", "deltas")
    methods = _parse_methods(args.methods or "split_cp,fedcp,gcfcp")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"experiment": "alpha-sweep", "alpha": alphas, "mc": args.mc, "seed": args.seed, "command": command,
               "datasets": {}}
    md = ["# alpha-sweep\n", f"Command: `{command}`\n"]
    for dataset in datasets:
        ds = DATASETS[dataset]
        path = _data_file(args.data_dir, ds["file"], "alpha-sweep")
        probs, labels = load_outputs(path)
        n_cal = ds["n_cal"] or len(labels) // 2
        sweep = []
        for alpha in alphas:
            summary, group_names, _ = run_classification(
                probs, labels, ds["groups"], ds["client_classes"], n_cal, alpha, methods, deltas, False, args.mc,
                args.seed, progress=args.progress, desc=f"{dataset} α={alpha}", fedcp_delta=args.fedcp_delta,
            )
            sweep.append((alpha, summary))
        fig = "fig4" if dataset == "cifar10" else "fig5"
        report.plot_alpha_sweep(sweep, group_names, out / f"alpha_sweep_{dataset}_{fig}a_coverage.png",
                                out / f"alpha_sweep_{dataset}_{fig}b_set_size.png",
                                title=f"{ds['title']}, {args.mc} splits")
        md += [f"\n## {ds['title']} (paper {fig.replace('fig', 'Fig. ')})\n", report.alpha_table(sweep, group_names)]
        payload["datasets"][dataset] = {
            "group_names": group_names, "groups": ds["groups"], "client_classes": ds["client_classes"],
            "sweep": [{"alpha": a, "methods": s} for a, s in sweep],
        }
    (out / "alpha_sweep.md").write_text("\n".join(md))
    _write_json(payload, Path(args.json) if args.json else out / "alpha_sweep.json")
    print("\n".join(md))
    return payload


# ------------------------------------------------------------------------------------------------ delta ablation
def exp_delta_ablation(args, command: str) -> dict:
    dataset = args.dataset if args.dataset not in (None, "both") else "cifar10"
    ds = DATASETS[dataset]
    path = _data_file(args.data_dir, ds["file"], "delta-ablation")
    probs, labels = load_outputs(path)
    n_cal = ds["n_cal"] or len(labels) // 2
    alpha = args.alpha if args.alpha is not None else 0.1
    deltas = _parse_floats(args.deltas or "25,50,100,250,500,1000,2500", "deltas")
    methods = _parse_methods(args.methods or "fedcp,centralized_gcfcp,gcfcp")
    summary, group_names, _ = run_classification(
        probs, labels, ds["groups"], ds["client_classes"], n_cal, alpha, methods, deltas, True, args.mc, args.seed,
        progress=args.progress, desc="delta-ablation", fedcp_delta=args.fedcp_delta,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"delta_ablation_{dataset}"
    table = report.delta_table(summary, group_names, alpha)
    bound = "; ".join(f"δ={d:g}: π/δ = {math.pi / d:.4f}" for d in deltas)
    md = [f"# delta-ablation ({ds['title']})\n", f"α = {alpha}, {args.mc} splits. Command: `{command}`\n",
          f"Sketch error bound of Lemma 5.1 ({bound}). Bytes per client = the client's payload arrays "
          "as sent (`client_payload` for that method alone, the arrays' nbytes; encoding in `docs/wire_format.md`); "
          "raw scores = the client's float64 calibration scores alone (8 n_k bytes); times are per client "
          "(summarize) and per calibration (server fit_all), averaged over splits.\n", conservative_note(deltas, alpha), table]
    (out / f"{stem}.md").write_text("\n".join(md))
    report.plot_delta_ablation(summary, group_names, alpha, out / f"{stem}.png",
                               title=f"δ ablation, {ds['title']}, α = {alpha}, {args.mc} splits")
    payload = _base_payload(
        "delta-ablation", args, alpha, group_names,
        {"data": str(path), "dataset": dataset, "groups": ds["groups"], "client_classes": ds["client_classes"],
         "n_cal": n_cal, "deltas": deltas},
        summary, command,
    )
    _write_json(payload, Path(args.json) if args.json else out / f"{stem}.json")
    print(table)
    return payload


# --------------------------------------------------------------------------------------------------------- scores
def exp_scores(args, command: str) -> dict:
    if not args.logits:
        raise ValueError("scores: --logits PATH is required (an npz with 'labels' and one of logits/probs/log_probs)")
    path = Path(args.logits)
    if not path.is_file():
        raise DataMissingError(f"scores: --logits file {str(path)!r} not found")
    probs, labels = load_outputs(path)
    L = probs.shape[1]
    groups_text = args.groups or default_label_windows(L)
    client_classes = args.client_classes or default_client_classes(L)
    n_cal = args.n_cal if args.n_cal is not None else len(labels) // 2
    alpha = args.alpha if args.alpha is not None else 0.1
    deltas = _parse_floats(args.deltas or "25,250,2500", "deltas")
    methods = _parse_methods(args.methods or "split_cp,fedcp,condcp,centralized_gcfcp,gcfcp")
    summary, group_names, _ = run_classification(
        probs, labels, groups_text, client_classes, n_cal, alpha, methods, deltas, not args.no_conservative,
        args.mc, args.seed, score=args.score, progress=args.progress, desc="scores", fedcp_delta=args.fedcp_delta,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"scores_{path.stem}"
    title = f"{path.name}: α = {alpha}, {args.mc} splits"
    table = report.markdown_table(summary, group_names, alpha)
    md = [f"# scores: {path.name}\n", f"{title}. Command: `{command}`\n",
          f"Groups: {groups_text}; clients (true labels): {client_classes}; n_cal = {n_cal} of {len(labels)}; "
          f"score {args.score}.\n", conservative_note(deltas, alpha, not args.no_conservative), table]
    (out / f"{stem}.md").write_text("\n".join(md))
    report.plot_group_coverage(summary, group_names, alpha, out / f"{stem}_group_coverage.png", title=title)
    payload = _base_payload(
        "scores", args, alpha, group_names,
        {"data": str(path), "groups": groups_text, "client_classes": client_classes, "n_cal": n_cal,
         "deltas": deltas, "score": args.score},
        summary, command,
    )
    _write_json(payload, Path(args.json) if args.json else out / f"{stem}.json")
    print(table)
    return payload


# ----------------------------------------------------------------------------------------------- class-conditional
CIFAR100_LOGITS = "logits/cifar100_resnet56_test_logits.npz"


def _progress_callback(enabled: bool, desc: str):
    """A ``progress(done, total)`` callable drawing a tqdm bar (None when disabled)."""
    if not enabled:
        return None, None
    from tqdm.auto import tqdm

    state: dict[str, Any] = {"bar": None}

    def progress(done: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = tqdm(total=total, desc=desc, unit="run", leave=False)
        state["bar"].n = done
        state["bar"].refresh()

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()

    return progress, close


def exp_dispatch(experiment: str, args, command: str) -> dict:
    """Class-conditional and set-valued experiments: ``simulations.experiments_classcond`` does the Monte Carlo and
    writes its tables and plots; this runner loads the model outputs (default: the CIFAR-100 ResNet-56 logits, the
    many-class case) and names the outputs."""
    from simulations import experiments_classcond as ecc

    if args.logits:
        path = Path(args.logits)
        if not path.is_file():
            raise DataMissingError(f"{experiment}: --logits file {str(path)!r} not found")
    else:
        path = _data_file(args.data_dir, CIFAR100_LOGITS, experiment)
    probs, labels = load_outputs(path)
    alpha = args.alpha if args.alpha is not None else 0.1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress, close = _progress_callback(args.progress, experiment)
    stem = experiment.replace("-", "_") + ("" if not args.logits else f"_{path.stem}")
    if experiment == "set-valued" and args.temperature_scaled:
        stem += "_ts"
    try:
        if experiment == "class-conditional":
            n_avg = [int(v) for v in _parse_floats(args.n_avg or "10,20,30,40,50,75", "n_avg")]
            delta = _parse_floats(args.deltas or "250", "deltas")[0]
            result = ecc.run_class_conditional(
                probs, labels, args.score, n_avg, args.mc, args.seed, alpha, delta=delta, progress=progress
            )
            title = f"Class-conditional CP on {path.name} ({args.mc} draws per n_avg)"
            text = ecc.write_class_conditional_table(result, out / f"{stem}.md", title=title)
            ecc.plot_class_conditional(result, out / f"{stem}.png", title=title)
        else:
            delta = _parse_floats(args.deltas or "2500", "deltas")[0]
            result = ecc.run_set_valued(
                probs, labels, args.mc, args.seed, delta=delta, temperature_scaled=args.temperature_scaled, progress=progress
            )
            scaled = ", temperature-scaled" if args.temperature_scaled else ""
            title = f"Set-valued classification on {path.name} ({args.mc} draws{scaled})"
            text = ecc.write_set_valued_table(result, out / f"{stem}.md", title=title)
            ecc.plot_set_valued(result, out / f"{stem}.png", title=title)
    finally:
        if close is not None:
            close()
    (out / f"{stem}.md").write_text(f"Command: `{command}`\n\n" + text)
    payload = {"experiment": experiment, "alpha": alpha, "mc": args.mc, "seed": args.seed, "command": command,
               "data": str(path), **dict(result)}
    _write_json(payload, Path(args.json) if args.json else out / f"{stem}.json")
    print(text)
    return payload


# -------------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulations.reproduce",
        description="Regenerate the GC-FCP paper's tables and figures by Monte Carlo over stored model outputs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Experiments", 1)[1] if __doc__ else None,
    )
    p.add_argument("experiment", choices=EXPERIMENTS)
    p.add_argument("--mc", type=int, default=None, help="Monte Carlo splits (paper: 50; 100 for regression/table5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="output folder (default results/simulations/ at the repository root, untracked)")
    p.add_argument("--update-results", action="store_true",
                   help="write to the committed simulations/results/ (what the README quotes)")
    p.add_argument("--json", default=None, help="JSON output path (default OUT/<experiment>.json)")
    p.add_argument("--data-dir", default=None,
                   help="shared data folder (default $FLWR_GCFCP_DATA or ../shared/data beside the repository)")
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--alphas", default=None, help="alpha-sweep: comma-separated α values")
    p.add_argument("--deltas", default=None, help="comma-separated δ values")
    p.add_argument("--methods", default=None, help="comma-separated method names (make_calibrators)")
    p.add_argument("--fedcp-delta", type=float, default=250.0,
                   help="δ of FedCP's digests (default 250; make_calibrators alone would use the first of --deltas)")
    p.add_argument("--no-conservative", action="store_true",
                   help="leave out the GC-FCP runs at level 1 - α + π/δ (on by default where the paper compares δ)")
    p.add_argument("--dataset", default=None, choices=["cifar10", "pathmnist", "both"],
                   help="alpha-sweep (default both) and delta-ablation (default cifar10)")
    p.add_argument("--logits", default=None, help="scores: npz with labels and logits / probs / log_probs")
    p.add_argument("--groups", default=None, help="scores / table5: group text (flwr_gcfcp.core.groups.parse_groups)")
    p.add_argument("--client-classes", default=None, help='scores: e.g. "0,1;2,3;4,5;6,7;8,9"')
    p.add_argument("--n-cal", type=int, default=None, help="scores: calibration points per split (default half)")
    p.add_argument("--score", default="softmax", help="scores: softmax | lac | aps | raps")
    p.add_argument("--name", default=None, help="scores: output file stem")
    p.add_argument("--n-avg", default=None, help="class-conditional: average calibration points per class, e.g. 10,20,50")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--temperature-scaled", action="store_true",
                   help="set-valued: every framework on temperature-scaled probabilities (T fitted per draw); stem + _ts")
    return p


DEFAULT_MC = {
    "regression-fig3": 100,
    "cifar10-table5": 100,
    "alpha-sweep": 20,
    "delta-ablation": 20,
    "class-conditional": 10,
    "set-valued": 10,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = _command_line(argv)
    if args.mc is None:
        args.mc = DEFAULT_MC.get(args.experiment, 50)
    if args.mc < 1:
        parser.error(f"--mc must be >= 1, got {args.mc}")
    args.data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    try:
        args.out = output_dir(args.out, args.update_results)
    except ValueError as exc:
        parser.error(str(exc))
    args.progress = not args.no_progress
    t0 = time.perf_counter()
    try:
        if args.experiment == "cifar10-table2":
            exp_label_table("cifar10-table2", "cifar10", args, command)
        elif args.experiment == "pathmnist-table4":
            exp_label_table("pathmnist-table4", "pathmnist", args, command)
        elif args.experiment == "regression-fig3":
            exp_regression(args, command)
        elif args.experiment == "cifar10-table5":
            exp_table5(args, command)
        elif args.experiment == "alpha-sweep":
            exp_alpha_sweep(args, command)
        elif args.experiment == "delta-ablation":
            exp_delta_ablation(args, command)
        elif args.experiment == "scores":
            exp_scores(args, command)
        else:
            exp_dispatch(args.experiment, args, command)
    except DataMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[{args.experiment}] done in {time.perf_counter() - t0:.1f} s; outputs in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
