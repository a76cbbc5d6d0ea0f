"""Markdown tables in the paper's layout and PNG plots (matplotlib, Agg backend).

Tables: one row per method, "coverage (set size)" per group, under-coverage marked
(``↓`` below 1 - α; ``↓*`` below 1 - α by more than 1.96 Monte Carlo standard errors, i.e. significant).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "display_name",
    "coverage_cell",
    "markdown_table",
    "delta_table",
    "alpha_table",
    "plot_group_coverage",
    "plot_alpha_sweep",
    "plot_delta_ablation",
    "plot_regression_intervals",
    "plot_group_miscoverage",
]

_NAMES = {
    "split_cp": "Centralized CP",
    "fedcp": "FedCP",
    "fedcp_qq": "FedCP-QQ",
    "mondrian": "Mondrian CP (max over groups)",
    "condcp": "Centralized CondCP",
    "centralized_gcfcp": "Centralized GC-FCP",
    "groupwise_random": "Group-wise CP, random overlap tie-break",
}
_DELTA_RE = re.compile(r"^gcfcp_delta([0-9.eE+-]+?)(_conservative)?$")

LEGEND = (
    "Coverage is the Monte Carlo mean; the bracket holds the mean prediction-set size on that group. "
    "`↓` marks coverage below 1 - α; `↓*` marks coverage below 1 - α by more than 1.96 Monte Carlo standard errors. "
    "`+π/δ` is GC-FCP asked for level 1 - α + π/δ (the sketch-error correction of Thm 5.1, `conservative=True`)."
)



def _save(fig, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    plt = _plt()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path

def display_name(method: str) -> str:
    if method in _NAMES:
        return _NAMES[method]
    m = _DELTA_RE.match(method)
    if m:
        return f"GC-FCP (δ={m.group(1)}{', +π/δ' if m.group(2) else ''})"
    return method


def delta_of(method: str) -> tuple[float, bool] | None:
    m = _DELTA_RE.match(method)
    if not m:
        return None
    return float(m.group(1)), bool(m.group(2))


def _fmt(x: float, digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{digits}f}"


def _mark(cov: float, se: float, alpha: float) -> str:
    target = 1.0 - alpha
    if cov is None or math.isnan(cov) or cov >= target - 1e-12:
        return ""
    # se <= 0: no Monte Carlo error estimate (a single run): mark, without claiming significance
    return " ↓*" if (se or 0.0) > 0 and cov + 1.96 * se < target else " ↓"


def coverage_cell(cov: float, se: float, alpha: float, size: float | None = None, size_digits: int = 2) -> str:
    cell = _fmt(cov, 3) + _mark(cov, se, alpha)
    if size is not None:
        cell += f" ({_fmt(size, size_digits)})"
    return cell


def markdown_table(
    summary: Mapping[str, Mapping],
    group_names: Sequence[str],
    alpha: float,
    size_key: str = "group_set_size",
    size_scale: float = 1.0,
    size_label: str = "set size",
    show_cost: bool = True,
    show_groups: Sequence[int] | None = None,
) -> str:
    """The paper's Table 2 / 4 layout: marginal coverage, then per group "coverage (size)"."""
    gidx = list(range(len(group_names))) if show_groups is None else list(show_groups)
    header = ["Method", "Marginal coverage"] + [f"{group_names[g]}" for g in gidx]
    if show_cost:
        header += ["Bytes / client", "Server fit (ms)", "Predict (ms)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in summary.items():
        marg = coverage_cell(row["marginal_coverage"], row.get("marginal_coverage_se", 0.0), alpha)
        cells = [display_name(name), marg]
        for g in gidx:
            size = row[size_key][g] * size_scale if size_key else None
            cells.append(coverage_cell(row["group_coverage"][g], row["group_coverage_se"][g], alpha, size))
        if show_cost:
            cells += [
                f"{row.get('bytes_per_client', float('nan')):,.0f}",
                _fmt(1e3 * row.get("fit_time_s", float("nan")), 2),
                _fmt(1e3 * row.get("predict_time_s", float("nan")), 2),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Cells: coverage ({size_label}). " + LEGEND)
    return "\n".join(lines) + "\n"


def delta_table(summary: Mapping[str, Mapping], group_names: Sequence[str], alpha: float) -> str:
    """δ ablation: one row per (δ, correction) with per-group coverage, size, bytes and time."""
    header = ["δ", "π/δ correction", "Min group coverage", "Marginal coverage"] + list(group_names) + [
        "Set size",
        "Bytes / client",
        "Raw scores / client",
        "Client summarize (ms)",
        "Server fit (ms)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = []
    for name, row in summary.items():
        d = delta_of(name)
        key = (0, 0.0, False) if d is None else (1, d[0], d[1])
        rows.append((key, name, row))
    rows.sort(key=lambda t: t[0])
    for (_, delta, cons), name, row in rows:
        gc = np.asarray(row["group_coverage"], dtype=float)
        gse = np.asarray(row["group_coverage_se"], dtype=float)
        worst = int(np.nanargmin(gc))
        cells = [
            display_name(name) if delta_of(name) is None else _fmt(delta, 0),
            ("yes" if cons else "no") if delta_of(name) is not None else "",
            coverage_cell(gc[worst], gse[worst], alpha) + f" ({group_names[worst]})",
            coverage_cell(row["marginal_coverage"], row.get("marginal_coverage_se", 0.0), alpha),
        ]
        cells += [coverage_cell(c, s, alpha) for c, s in zip(gc, gse)]
        cells += [
            _fmt(row["marginal_set_size"], 3),
            f"{row['bytes_per_client']:,.0f}",
            f"{row.get('raw_bytes_per_client', float('nan')):,.0f}",
            _fmt(1e3 * row["client_time_s"], 2),
            _fmt(1e3 * row["fit_time_s"], 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(LEGEND)
    return "\n".join(lines) + "\n"


def alpha_table(sweep: Sequence[tuple[float, Mapping]], group_names: Sequence[str]) -> str:
    """Alpha sweep: rows (1 - α, method) with per-group coverage (set size)."""
    header = ["1 - α", "Method", "Marginal coverage"] + list(group_names) + ["Set size"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for alpha, summary in sweep:
        for name, row in summary.items():
            cells = [f"{1 - alpha:.2f}", display_name(name),
                     coverage_cell(row["marginal_coverage"], row.get("marginal_coverage_se", 0.0), alpha)]
            cells += [
                coverage_cell(c, s, alpha, z)
                for c, s, z in zip(row["group_coverage"], row["group_coverage_se"], row["group_set_size"])
            ]
            cells.append(_fmt(row["marginal_set_size"], 3))
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(LEGEND)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_group_coverage(
    summary: Mapping[str, Mapping],
    group_names: Sequence[str],
    alpha: float,
    path: str | Path,
    title: str = "",
    miscoverage: bool = False,
) -> Path:
    """Grouped bars: per-group coverage (or miscoverage) per method, ±1.96 SE bars, and the 1 - α (α) line."""
    plt = _plt()
    methods = list(summary)
    d = len(group_names)
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * d + 2) + 3.0, 4.0))
    x = np.arange(d)
    for i, name in enumerate(methods):
        cov = np.asarray(summary[name]["group_coverage"], dtype=float)
        se = np.asarray(summary[name]["group_coverage_se"], dtype=float)
        vals = 1.0 - cov if miscoverage else cov
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, vals, width, yerr=1.96 * se, capsize=2,
               label=display_name(name))
    target = alpha if miscoverage else 1.0 - alpha
    ax.axhline(target, color="k", linestyle="--", linewidth=1, label=("α" if miscoverage else "1 - α"))
    ax.set_xticks(x)
    ax.set_xticklabels(group_names)
    if miscoverage:
        ax.set_ylabel("miscoverage")
        top = max(float(np.nanmax([1 - np.asarray(summary[m]["group_coverage"]) for m in methods])), alpha)
        ax.set_ylim(0, top * 1.35)
    else:
        ax.set_ylabel("coverage")
        lo = float(np.nanmin([np.asarray(summary[m]["group_coverage"]) for m in methods]))
        ax.set_ylim(max(0.0, min(lo, 1 - alpha) - 0.05), 1.0)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def plot_alpha_sweep(
    sweep: Sequence[tuple[float, Mapping]], group_names: Sequence[str], path_cov: str | Path, path_size: str | Path,
    title: str = "",
) -> tuple[Path, Path]:
    """Figs 4/5: per-group coverage and set size against 1 - α, one panel per group, one line per method."""
    plt = _plt()
    levels = np.array([1 - a for a, _ in sweep])
    methods = list(sweep[0][1])
    d = len(group_names)
    out = []
    for kind, path in (("coverage", path_cov), ("size", path_size)):
        fig, axes = plt.subplots(1, d, figsize=(3.0 * d, 3.2), sharey=True, squeeze=False)
        for g in range(d):
            ax = axes[0, g]
            for name in methods:
                if kind == "coverage":
                    y = np.array([s[name]["group_coverage"][g] for _, s in sweep])
                    se = np.array([s[name]["group_coverage_se"][g] for _, s in sweep])
                    ax.errorbar(levels, y, yerr=1.96 * se, marker="o", markersize=3, capsize=2, label=display_name(name))
                else:
                    y = np.array([s[name]["group_set_size"][g] for _, s in sweep])
                    ax.plot(levels, y, marker="o", markersize=3, label=display_name(name))
            if kind == "coverage":
                ax.plot(levels, levels, "k--", linewidth=1, label="1 - α")
            ax.set_title(group_names[g])
            ax.set_xlabel("1 - α")
        axes[0, 0].set_ylabel("coverage" if kind == "coverage" else "average set size")
        axes[0, -1].legend(fontsize=7)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=130)
        plt.close(fig)
        out.append(path)
    return out[0], out[1]


def plot_delta_ablation(summary: Mapping[str, Mapping], group_names: Sequence[str], alpha: float, path: str | Path,
                        title: str = "") -> Path:
    """δ ablation curves: min/per-group coverage, set size, bytes per client and fit time against δ."""
    plt = _plt()
    series = {False: [], True: []}
    for name, row in summary.items():
        d = delta_of(name)
        if d is not None:
            series[d[1]].append((d[0], row))
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for cons, rows in series.items():
        if not rows:
            continue
        rows.sort(key=lambda t: t[0])
        deltas = np.array([r[0] for r in rows])
        lab = "GC-FCP +π/δ" if cons else "GC-FCP"
        ls = "--" if cons else "-"
        gc = np.array([r[1]["group_coverage"] for r in rows])
        gse = np.array([r[1]["group_coverage_se"] for r in rows])
        for g in range(gc.shape[1]):
            axes[0].errorbar(deltas, gc[:, g], yerr=1.96 * gse[:, g], linestyle=ls, marker="o", markersize=3,
                             capsize=2, label=f"{lab} {group_names[g]}")
        axes[1].plot(deltas, [r[1]["marginal_set_size"] for r in rows], ls, marker="o", label=lab)
        axes[2].plot(deltas, [r[1]["bytes_per_client"] for r in rows], ls, marker="o", label=lab)
        axes[3].plot(deltas, [1e3 * r[1]["fit_time_s"] for r in rows], ls, marker="o", label=lab + " server fit")
        axes[3].plot(deltas, [1e3 * r[1]["client_time_s"] for r in rows], ls, marker="x",
                     label=lab + " client summarize")
    for name, row in summary.items():  # centralized references as horizontal lines
        if delta_of(name) is None and name in ("centralized_gcfcp", "condcp", "fedcp"):
            axes[1].axhline(row["marginal_set_size"], color="gray", linewidth=0.8, linestyle=":")
            axes[2].axhline(row["bytes_per_client"], color="gray", linewidth=0.8, linestyle=":",
                            label=display_name(name) if name == "centralized_gcfcp" else None)
    axes[0].axhline(1 - alpha, color="k", linestyle=":", linewidth=1)
    axes[0].set_ylabel("group coverage")
    axes[1].set_ylabel("average set size")
    axes[2].set_ylabel("bytes per client")
    axes[3].set_ylabel("time (ms)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("δ")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=5, ncol=2)
    for ax in axes[1:]:
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_regression_intervals(
    x_grid: np.ndarray, f_grid: np.ndarray, thresholds: Mapping[str, np.ndarray], x_test: np.ndarray,
    y_test: np.ndarray, path: str | Path, intervals: Sequence[tuple[float, float]] = (), title: str = "",
) -> Path:
    """Fig. 3a/b: the interval f(x) ± q(x) over x for each method, with test points and group intervals."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(x_test, y_test, s=6, color="0.6", label="test points", zorder=1)
    ax.plot(x_grid, f_grid, color="k", linewidth=1, label="f(x)")
    for name, q in thresholds.items():
        q = np.asarray(q, dtype=float)
        line, = ax.plot(x_grid, f_grid + q, linewidth=1.3, label=display_name(name))
        ax.plot(x_grid, f_grid - q, linewidth=1.3, color=line.get_color())
    finite_y = y_test[np.isfinite(y_test)]
    if finite_y.size:
        lo, hi = np.percentile(finite_y, [0.5, 99.5])
        span = hi - lo
        ax.set_ylim(lo - 0.3 * span, hi + 0.3 * span)
    for i, (a, b) in enumerate(intervals):
        ax.annotate("", xy=(a, ax.get_ylim()[0] + 0.04 * (i + 1) * np.ptp(ax.get_ylim())),
                    xytext=(b, ax.get_ylim()[0] + 0.04 * (i + 1) * np.ptp(ax.get_ylim())),
                    arrowprops=dict(arrowstyle="<->", color="0.4", linewidth=0.8))
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def plot_group_miscoverage(summary, group_names, alpha, path, title: str = "") -> Path:
    """Fig. 3c: per-group miscoverage per method with ±1.96 SE bars and the α line."""
    return plot_group_coverage(summary, group_names, alpha, path, title=title, miscoverage=True)
