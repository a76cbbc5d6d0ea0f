"""Monte Carlo experiments for class-conditional CP (Ding et al.) and the set-valued frameworks (Chzhen et al.).

Entry points used by ``simulations.reproduce``:

* :func:`run_class_conditional` (``class-conditional``): CovGap / AvgSize / FracUnderCov against the average number
  of calibration points per class for standard, classwise and clustered CP, centralized and federated.
* :func:`run_set_valued` (``set-valued``): the survey's comparisons (Figures 5-7).
* :func:`write_class_conditional_table`, :func:`plot_class_conditional`, :func:`write_set_valued_table`,
  :func:`plot_set_valued`: markdown tables and PNG plots (matplotlib Agg) from the returned dicts.

Protocol of one class-conditional draw (Ding et al. §4): ``n_avg · L`` calibration points drawn uniformly at random
without replacement from the model outputs, the rest is the test set. Scores come from one score matrix per draw
(APS/RAPS randomized with the draw's generator). Clustered CP splits the calibration points with the heuristic γ;
the federated versions partition the calibration points over ``n_clients`` clients with flwr-datasets'
Dirichlet label-skew partitioner (concentration ``dirichlet_alpha``) and use *the same* clustering/proper assignment
of each point (common random numbers), so the centralized-federated difference is the digest compression alone.
CovGap = mean over classes of ``|ĉ_y - (1 - α)|`` in percentage points, FracUnderCov = fraction of classes with
``ĉ_y <= 1 - α - 0.1``; classes without test points are left out of both.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import scipy.special

from flwr_gcfcp.methods.classcond import ClassConditionalCP, FederatedClassConditionalCP, clustering_heuristic, fit_federated_in_process
from flwr_gcfcp.core.scores import make_score
from flwr_gcfcp.methods.setvalued import SetValuedClassifier, fit_temperature
from flwr_gcfcp.methods.setvalued import fit_federated_in_process as fit_setvalued_federated
from flwr_gcfcp.core.validation import InsufficientDataWarning, check_alpha, check_labels, check_probabilities

__all__ = [
    "CLASS_CONDITIONAL_METHODS",
    "class_metrics",
    "dirichlet_clients",
    "plot_class_conditional",
    "plot_set_valued",
    "run_class_conditional",
    "run_set_valued",
    "write_class_conditional_table",
    "write_set_valued_table",
]

CLASS_CONDITIONAL_METHODS = (
    "standard",
    "classwise",
    "clustered",
    "federated_standard",
    "federated_classwise",
    "federated_clustered",
)


def class_metrics(mask: np.ndarray, labels: np.ndarray, n_classes: int, alpha: float) -> dict[str, float]:
    """CovGap (percentage points), AvgSize, FracUnderCov and marginal coverage of one set mask."""
    covered = mask[np.arange(labels.size), labels].astype(np.float64)
    n_y = np.bincount(labels, minlength=n_classes)
    cov_y = np.bincount(labels, weights=covered, minlength=n_classes)
    present = n_y > 0
    cy = cov_y[present] / n_y[present]
    return {
        "covgap": float(100 * np.mean(np.abs(cy - (1 - alpha)))),
        "avg_size": float(mask.sum(axis=1).mean()),
        "frac_undercov": float(np.mean(cy <= 1 - alpha - 0.1 + 1e-12)),
        "coverage": float(covered.mean()),
    }


def dirichlet_clients(labels: np.ndarray, n_clients: int, concentration: float, seed: int) -> np.ndarray:
    """Client index of each point from flwr-datasets' DirichletPartitioner (label skew), via ``data.dirichlet_partition``."""
    from flwr_gcfcp.app.datasets import arrays_to_dataset, dirichlet_partition

    n = labels.size
    ds = arrays_to_dataset(np.arange(n, dtype=np.float32)[:, None], labels, n_classes=int(labels.max()) + 1)
    parts = dirichlet_partition(ds, n_clients, concentration, seed=seed, min_partition_size=1)
    client = np.full(n, -1, dtype=np.int64)
    for k, part in enumerate(parts):
        client[np.asarray(part["index"], dtype=np.int64)] = k
    if (client < 0).any():
        raise RuntimeError("the Dirichlet partition did not cover every calibration point")
    return client


def _summ(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1) / np.sqrt(arr.size)) if arr.size > 1 else 0.0


def run_class_conditional(
    probs: np.ndarray,
    labels: np.ndarray,
    score: str,
    n_avg: Sequence[int],
    mc: int,
    seed: int,
    alpha: float,
    n_clients: int = 5,
    dirichlet_alpha: float = 0.5,
    delta: float = 250,
    progress: Callable[[int, int], None] | None = None,
    methods: Sequence[str] = CLASS_CONDITIONAL_METHODS,
) -> dict:
    """Class-conditional experiment (Ding et al. Fig. 2 / Table 2, plus federated versions).

    Parameters
    ----------
    probs : (n, L) probabilities; labels : (n,) int
    score : {"softmax", "aps", "raps"}
    n_avg : average calibration points per class, e.g. [10, 20, 30, 40, 50, 75]
    mc : Monte Carlo draws per n_avg; seed : base seed; alpha : miscoverage
    n_clients, dirichlet_alpha : federated partition (label-skewed Dirichlet via flwr-datasets)
    delta : T-digest compression of the federated versions
    progress : callable(done, total), optional
    methods : subset of :data:`CLASS_CONDITIONAL_METHODS`

    Returns
    -------
    dict
        ``{"methods": {NAME: {"n_avg", "covgap", "avg_size", "frac_undercov", "coverage", "covgap_se",
        "avg_size_se", "frac_undercov_se", "n_clusters"}}, "config": {...}}`` (means over draws).
    """
    p = check_probabilities(probs)
    n, L = p.shape
    y = check_labels(labels, L)
    check_alpha(alpha)
    unknown = [m for m in methods if m not in CLASS_CONDITIONAL_METHODS]
    if unknown:
        raise ValueError(f"methods must be among {list(CLASS_CONDITIONAL_METHODS)}, got {unknown}")
    n_avg = [int(v) for v in n_avg]
    if any(v < 1 or v * L >= n for v in n_avg):
        raise ValueError(f"n_avg values must be >= 1 and leave test points (n_avg * L < {n}), got {n_avg}")
    if int(mc) < 1:
        raise ValueError(f"mc must be >= 1, got {mc!r}")
    kwargs = {"randomized": True, "seed": int(seed)} if score.lower() in ("aps", "raps") else {}
    sf = make_score(score, **kwargs)
    raw: dict[str, dict[int, dict[str, list[float]]]] = {m: {v: {} for v in n_avg} for m in methods}
    total, done = len(n_avg) * int(mc), 0
    for v in n_avg:
        for t in range(int(mc)):
            rng = np.random.default_rng([int(seed), v, t])
            sm = sf.score_matrix(p, rng=rng)
            perm = rng.permutation(n)
            cal, test = perm[: v * L], perm[v * L :]
            s_cal, y_cal = sm[cal, y[cal]], y[cal]
            counts = np.bincount(y_cal, minlength=L)
            gamma = clustering_heuristic(counts, alpha)[0]
            clust_mask = rng.random(cal.size) < gamma
            client = None
            for m in methods:
                base = m.replace("federated_", "")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", InsufficientDataWarning)
                    if m.startswith("federated_"):
                        if client is None:
                            client = dirichlet_clients(y_cal, n_clients, dirichlet_alpha, seed=int(rng.integers(2**31)))
                        model = FederatedClassConditionalCP(base, alpha, L, delta=delta, random_state=int(seed))
                        sel = [client == k for k in range(n_clients)]
                        fit_federated_in_process(
                            model, [s_cal[c] for c in sel], [y_cal[c] for c in sel],
                            client_masks=[clust_mask[c] for c in sel] if base == "clustered" else None,
                        )
                    else:
                        model = ClassConditionalCP(base, alpha, L, random_state=int(seed))
                        model.fit(s_cal, y_cal, clustering_mask=clust_mask if base == "clustered" else None)
                met = class_metrics(model.predict(sm[test]), y[test], L, alpha)
                met["n_clusters"] = float(getattr(model, "n_clusters_", 1))
                for key, val in met.items():
                    raw[m][v].setdefault(key, []).append(val)
            done += 1
            if progress is not None:
                progress(done, total)
    out: dict = {"methods": {}, "config": {
        "score": score, "n_avg": n_avg, "mc": int(mc), "seed": int(seed), "alpha": float(alpha),
        "n_clients": int(n_clients), "dirichlet_alpha": float(dirichlet_alpha), "delta": float(delta),
        "n_points": int(n), "n_classes": int(L),
    }}
    for m in methods:
        res: dict[str, list] = {"n_avg": n_avg}
        for key in ("covgap", "avg_size", "frac_undercov", "coverage", "n_clusters"):
            stats = [_summ(raw[m][v][key]) for v in n_avg]
            res[key] = [s[0] for s in stats]
            res[f"{key}_se"] = [s[1] for s in stats]
        out["methods"][m] = res
    return out


# ---------------------------------------------------------------------------------------------------- set-valued
def _err_size(mask: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    return float(1 - mask[np.arange(labels.size), labels].mean()), float(mask.sum(axis=1).mean())


def run_set_valued(
    probs: np.ndarray,
    labels: np.ndarray,
    mc: int,
    seed: int,
    *,
    k_values: Sequence[int] | None = None,
    k_bar_values: Sequence[float] | None = None,
    eps_values: Sequence[float] | None = None,
    lam_values: Sequence[float] | None = None,
    beta_values: Sequence[float] | None = None,
    hybrid_k: int | None = None,
    n_clients: int = 5,
    dirichlet_alpha: float = 0.5,
    delta: float = 2500,
    federated: bool = True,
    temperature_scaled: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """The survey's comparisons on one model's outputs.

    Each draw splits the points in two halves: the first calibrates (temperature for point-wise error control,
    thresholds for the average-control, F_β and hybrid frameworks), the second is held out for average error
    ``P(Y ∉ Γ(X))`` and average size ``E|Γ(X)|``. Federated versions (average size, average error, F_β, hybrid,
    point-wise error's temperature) calibrate from the first half partitioned over ``n_clients`` clients
    (Dirichlet label skew) and are evaluated on the same held-out half.

    ``temperature_scaled=True``: every framework works on ``softmax(log p̂ / T)`` with T fitted (NLL, refined grid)
    on each draw's calibration half (the federated fit gives the same T exactly); the point-wise temperature fit
    then finds T ≈ 1.

    Returns
    -------
    dict
        ``{"frameworks": {NAME: {"param_name", "param", "error", "size", "error_se", "size_se", "error_draws"}},
        "federated": {NAME: {...}}, "config": {...}, "temperatures": [T per draw]}``. NAME in top_k,
        average_size, pointwise_error, average_error, penalized, f_beta, hybrid_size. ``temperatures``: the
        point-wise error temperature fitted on each draw (centralized; on the scaled probabilities if
        ``temperature_scaled``), and with ``temperature_scaled`` also ``scaling_temperatures``.
    """
    p = check_probabilities(probs)
    n, L = p.shape
    y = check_labels(labels, L)
    logits = np.log(np.maximum(p, 1e-300))
    kmax = min(L - 1, 10)
    k_values = list(k_values) if k_values is not None else list(range(1, kmax + 1))
    k_bar_values = list(k_bar_values) if k_bar_values is not None else [float(x) for x in np.linspace(0.5, kmax, 2 * kmax)]
    eps_values = list(eps_values) if eps_values is not None else [0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3]
    lam_values = list(lam_values) if lam_values is not None else [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]
    beta_values = list(beta_values) if beta_values is not None else [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    hybrid_k = hybrid_k if hybrid_k is not None else min(L - 1, 5)
    hybrid_kbars = [kb for kb in k_bar_values if kb < hybrid_k]
    specs = {
        "top_k": ("k", k_values, lambda v: {"k": int(v)}),
        "average_size": ("k_bar", k_bar_values, lambda v: {"k_bar": v}),
        "pointwise_error": ("epsilon", eps_values, lambda v: {"epsilon": v}),
        "average_error": ("epsilon", eps_values, lambda v: {"epsilon": v}),
        "penalized": ("lam", lam_values, lambda v: {"lam": v}),
        "f_beta": ("beta", beta_values, lambda v: {"beta": v}),
        "hybrid_size": ("k_bar", hybrid_kbars, lambda v: {"k": hybrid_k, "k_bar": v}),
    }
    fed_names = ("average_size", "pointwise_error", "average_error", "f_beta", "hybrid_size")
    raw = {name: {"error": [[] for _ in spec[1]], "size": [[] for _ in spec[1]]} for name, spec in specs.items()}
    raw_fed = {name: {"error": [[] for _ in specs[name][1]], "size": [[] for _ in specs[name][1]]} for name in fed_names}
    temps: list[float] = []
    scaling: list[float] = []
    for t in range(int(mc)):
        rng = np.random.default_rng([int(seed), t])
        perm = rng.permutation(n)
        cal, test = perm[: n // 2], perm[n // 2 :]
        pc, yc, zc = p[cal], y[cal], logits[cal]
        pt, yt, zt = p[test], y[test], logits[test]
        if temperature_scaled:
            scaling.append(fit_temperature(zc, yc))
            pc, pt = scipy.special.softmax(zc / scaling[-1], axis=1), scipy.special.softmax(zt / scaling[-1], axis=1)
            zc, zt = np.log(np.maximum(pc, 1e-300)), np.log(np.maximum(pt, 1e-300))
        client = dirichlet_clients(yc, n_clients, dirichlet_alpha, seed=int(rng.integers(2**31))) if federated else None
        sel = [client == k for k in range(n_clients)] if federated else []
        temp_c = temp_f = None
        for name, (_, values, make) in specs.items():
            for j, v in enumerate(values):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", InsufficientDataWarning)
                    model = SetValuedClassifier(name, delta=delta, **make(v))
                    if name == "pointwise_error" and temp_c is not None:
                        model.temperature_, model._fitted, model.n_labels_ = temp_c, True, L
                    else:
                        model.fit(pc, yc, logits=zc)
                        if name == "pointwise_error":
                            temp_c = model.temperature_
                            temps.append(float(temp_c))
                    e, s = _err_size(model.predict(pt, logits=zt) if name == "pointwise_error" else model.predict(pt), yt)
                    raw[name]["error"][j].append(e)
                    raw[name]["size"][j].append(s)
                    if federated and name in fed_names:
                        fm = SetValuedClassifier(name, delta=delta, **make(v))
                        if name == "pointwise_error" and temp_f is not None:
                            fm.temperature_, fm._fitted, fm.n_labels_ = temp_f, True, L
                        else:
                            fit_setvalued_federated(fm, [pc[c] for c in sel], [yc[c] for c in sel], [zc[c] for c in sel])
                            if name == "pointwise_error":
                                temp_f = fm.temperature_
                        e, s = _err_size(fm.predict(pt, logits=zt) if name == "pointwise_error" else fm.predict(pt), yt)
                        raw_fed[name]["error"][j].append(e)
                        raw_fed[name]["size"][j].append(s)
        if progress is not None:
            progress(t + 1, int(mc))

    def collect(store: Mapping, names: Sequence[str]) -> dict:
        res = {}
        for name in names:
            pname, values, _ = specs[name]
            entry: dict[str, object] = {"param_name": pname, "param": [float(v) for v in values]}
            for key in ("error", "size"):
                stats = [_summ(vals) for vals in store[name][key]]
                entry[key] = [s[0] for s in stats]
                entry[f"{key}_se"] = [s[1] for s in stats]
            entry["error_draws"] = [[float(e) for e in vals] for vals in store[name]["error"]]
            res[name] = entry
        return res

    return {
        "frameworks": collect(raw, list(specs)),
        "federated": collect(raw_fed, list(fed_names)) if federated else {},
        "config": {"mc": int(mc), "seed": int(seed), "n_points": int(n), "n_classes": int(L), "hybrid_k": int(hybrid_k),
                   "delta": float(delta), "n_clients": int(n_clients), "dirichlet_alpha": float(dirichlet_alpha),
                   "size_rule": "survey", "temperature_scaled": bool(temperature_scaled)},
        "temperatures": temps,
        **({"scaling_temperatures": scaling} if temperature_scaled else {}),
    }


# ------------------------------------------------------------------------------------------------------ reports
_LABELS = {
    "standard": "Standard", "classwise": "Classwise", "clustered": "Clustered",
    "federated_standard": "Fed. standard", "federated_classwise": "Fed. classwise", "federated_clustered": "Fed. clustered",
}


def write_class_conditional_table(result: Mapping, path: str | Path, title: str | None = None) -> str:
    """Markdown table (one row per method and n_avg: CovGap ± s.e., AvgSize, FracUnderCov, M). Returns the text."""
    cfg = result.get("config", {})
    lines = [f"## {title or 'Class-conditional coverage'}", ""]
    if cfg:
        lines += [
            f"score={cfg.get('score')}, alpha={cfg.get('alpha')}, mc={cfg.get('mc')}, seed={cfg.get('seed')}, "
            f"federated: {cfg.get('n_clients')} clients, Dirichlet({cfg.get('dirichlet_alpha')}), delta={cfg.get('delta')}",
            "",
        ]
    lines += ["| method | n_avg | CovGap (pp) | AvgSize | FracUnderCov | coverage | clusters |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, res in result["methods"].items():
        for i, v in enumerate(res["n_avg"]):
            lines.append(
                f"| {_LABELS.get(name, name)} | {v} | {res['covgap'][i]:.2f} ± {res.get('covgap_se', [0] * 99)[i]:.2f} | "
                f"{res['avg_size'][i]:.2f} | {res['frac_undercov'][i]:.3f} | {res.get('coverage', [float('nan')] * 99)[i]:.3f} | "
                f"{res.get('n_clusters', [float('nan')] * 99)[i]:.1f} |"
            )
    text = "\n".join(lines) + "\n"
    Path(path).write_text(text)
    return text


def plot_class_conditional(result: Mapping, path: str | Path, title: str | None = None) -> None:
    """Three panels (CovGap, AvgSize, FracUnderCov against n_avg), ±1.96 s.e. bands; federated dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    colors = {"standard": "C0", "classwise": "C1", "clustered": "C2"}
    for name, res in result["methods"].items():
        base = name.replace("federated_", "")
        style = "--" if name.startswith("federated_") else "-"
        x = np.asarray(res["n_avg"])
        for ax, key, lab in zip(axes, ("covgap", "avg_size", "frac_undercov"), ("CovGap (pp)", "AvgSize", "FracUnderCov")):
            m = np.asarray(res[key])
            se = np.asarray(res.get(f"{key}_se", np.zeros_like(m)))
            ax.plot(x, m, style, marker="o", ms=3, color=colors.get(base), label=_LABELS.get(name, name))
            ax.fill_between(x, m - 1.96 * se, m + 1.96 * se, color=colors.get(base), alpha=0.12)
            ax.set_xlabel("n_avg (calibration points per class)")
            ax.set_ylabel(lab)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_set_valued_table(result: Mapping, path: str | Path, title: str | None = None) -> str:
    """Markdown table of held-out average error and size per framework and parameter (federated alongside)."""
    lines = [f"## {title or 'Set-valued frameworks'}", ""]
    cfg = result.get("config", {})
    if cfg:
        lines += [f"mc={cfg.get('mc')}, seed={cfg.get('seed')}, n={cfg.get('n_points')} (half calibration, half held out), "
                  f"hybrid k={cfg.get('hybrid_k')}, federated: {cfg.get('n_clients')} clients, delta={cfg.get('delta')}, "
                  f"size rule: {cfg.get('size_rule', 'exact_size')}"
                  + (", temperature-scaled probabilities" if cfg.get("temperature_scaled") else ""), ""]
    if result.get("scaling_temperatures"):
        lines += ["temperature scaling the probabilities, per draw: "
                  + ", ".join(f"{t:.4f}" for t in result["scaling_temperatures"]), ""]
    if result.get("temperatures"):
        lines += ["point-wise error temperature, per draw: " + ", ".join(f"{t:.4f}" for t in result["temperatures"]), ""]
    lines += ["| framework | parameter | error | size | fed. error | fed. size |", "|---|---|---:|---:|---:|---:|"]
    fed = result.get("federated", {})
    for name, res in result["frameworks"].items():
        for i, v in enumerate(res["param"]):
            fe = fs = ""
            if name in fed:
                fe, fs = f"{fed[name]['error'][i]:.4f}", f"{fed[name]['size'][i]:.3f}"
            lines.append(f"| {name} | {res['param_name']}={v:g} | {res['error'][i]:.4f} | {res['size'][i]:.3f} | {fe} | {fs} |")
    text = "\n".join(lines) + "\n"
    Path(path).write_text(text)
    return text


def plot_set_valued(result: Mapping, path: str | Path, title: str | None = None) -> None:
    """Survey Figures 5-7: error vs size constraint (top-k vs average size), size vs error constraint
    (point-wise vs average error), and the error/size trade-off of every framework."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fw = result["frameworks"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax = axes[0]
    ax.step(fw["top_k"]["param"], fw["top_k"]["error"], where="post", label="point-wise size (top-k)")
    ax.plot(fw["average_size"]["param"], fw["average_size"]["error"], marker=".", label="average size")
    ax.set_xlabel("size constraint (k or k̄)")
    ax.set_ylabel("average error")
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot(fw["pointwise_error"]["param"], fw["pointwise_error"]["size"], marker=".", label="point-wise error")
    ax.plot(fw["average_error"]["param"], fw["average_error"]["size"], marker=".", label="average error")
    ax.set_xlabel("error constraint (ε or ε̄)")
    ax.set_ylabel("average size")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax = axes[2]
    for name, res in fw.items():
        order = np.argsort(res["size"])
        ax.plot(np.asarray(res["size"])[order], np.asarray(res["error"])[order], marker=".", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("average size")
    ax.set_ylabel("average error")
    ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
