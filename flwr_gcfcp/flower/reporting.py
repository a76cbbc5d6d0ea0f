"""Write the conformal results of a Flower run: results.json, results.md, coverage.png, predictor JSON files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..core.metrics import to_jsonable


def _fmt(x: Any, pct: bool = True) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return "inf"
    return f"{100 * v:.1f}" if pct else f"{v:.2f}"


def format_table(report: dict[str, Any]) -> str:
    """Markdown table: one row per method, marginal and per-group coverage (%) and mean set size."""
    methods = report.get("methods", {})
    names = list(report.get("groups", {}).get("names") or [])
    n_groups = max((len(m.get("group_coverage", [])) for m in methods.values()), default=len(names))
    if len(names) != n_groups:
        names = [f"G{g + 1}" for g in range(n_groups)]
    alpha = report.get("alpha")
    size = str(report.get("set_size_label") or "set size")  # "interval length" for regression (2·threshold)
    short = "length" if size == "interval length" else "size"
    head = ["method", "private", "coverage %", size]
    head += [f"cov {g} %" for g in names] + [f"{short} {g}" for g in names]
    lines = []
    if alpha is not None:
        lines.append(f"Target coverage 1 - alpha = {100 * (1 - float(alpha)):.1f} %")
        lines.append("")
    if short == "length":
        lines.append("Prediction intervals f(x) ± threshold: coverage is |y - f(x)| <= threshold, length is 2·threshold.")
        lines.append("")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    for name, m in methods.items():
        row = [
            name,
            "yes" if m.get("private", True) else "NO (raw scores)",
            _fmt(m.get("marginal_coverage")),
            _fmt(m.get("marginal_set_size"), pct=False),
        ]
        row += [_fmt(v) for v in m.get("group_coverage", [])]
        row += [_fmt(v, pct=False) for v in m.get("group_set_size", [])]
        lines.append("| " + " | ".join(row) + " |")
    lines += _class_table(methods) if short != "length" else []
    excluded = (
        list(report.get("excluded_clients", []))
        + list(report.get("flagged_clients", []))
        + list(report.get("evaluation_excluded_clients", []))
    )
    if excluded:
        lines.append("")
        lines.append("Excluded clients:")
        for e in excluded:
            lines.append(f"- {e.get('client')} ({e.get('phase')}): {e.get('reason')}")
    status = report.get("status")
    if status and status != "evaluated":
        lines = [f"Status: {status}", ""] + lines
    return "\n".join(lines) + "\n"


def _class_table(methods: dict[str, Any], max_columns: int = 20) -> list[str]:
    """Per-class coverage: CovGap (pp), FracUnderCov, the smallest class coverage, and each class up to 20 labels."""
    if not any("covgap" in m for m in methods.values()):
        return []
    n_cls = max((len(m.get("class_coverage", [])) for m in methods.values()), default=0)
    head = ["method", "CovGap (pp)", "FracUnderCov", "min class cov %"]
    if n_cls <= max_columns:
        head += [f"cov y={c} %" for c in range(n_cls)]
    lines = ["", "Per-class coverage (CovGap = mean |coverage_y - (1 - alpha)| in percentage points):", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name, m in methods.items():
        cov = [float(v) if isinstance(v, (int, float)) else float("nan") for v in m.get("class_coverage", [])]
        finite = [v for v in cov if v == v]
        row = [name, _fmt(m.get("covgap"), pct=False), _fmt(m.get("frac_undercov"), pct=False)]
        row.append(_fmt(min(finite)) if finite else "-")
        if n_cls <= max_columns:
            row += [_fmt(v) for v in cov] + ["-"] * (n_cls - len(cov))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def save_predictor(predictor: dict[str, Any], path: Path) -> None:
    """Save a calibrated predictor (the JSON-able dict of ``Calibrator.predictor()``)."""
    path.write_text(json.dumps(to_jsonable(predictor), indent=1))


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):  # None or text: missing ("inf"/"nan" strings from JSON parse as floats)
        return float("nan")


def _plot_title(report: dict[str, Any], dataset: str | None, alpha: float | None, deltas: Any) -> str:
    """"<data set>: α = ..., δ = ..." from the arguments, else from the report and its run config."""
    cfg = report.get("config") or {}
    if dataset is None:
        dataset = report.get("dataset") or cfg.get("dataset")
        if dataset == "outputs" and cfg.get("outputs-path"):
            dataset = f"outputs {Path(str(cfg['outputs-path'])).name}"
    if alpha is None:
        alpha = report.get("alpha", cfg.get("alpha"))
    if deltas is None:
        deltas = cfg.get("deltas")
    if isinstance(deltas, (list, tuple)):
        deltas = ", ".join(f"{_as_float(d):g}" for d in deltas)
    elif deltas is not None:
        deltas = ", ".join(t.strip() for t in str(deltas).split(",") if t.strip())
    parts = [str(dataset) if dataset else "Conformal prediction"]
    meta = []
    if alpha is not None:
        meta.append(f"α = {_as_float(alpha):g} (target coverage {1 - _as_float(alpha):g})")
    if deltas not in (None, ""):
        meta.append(f"δ = {deltas}")
    return parts[0] + (": " + ", ".join(meta) if meta else "")


def _coverage_floor(coverage: Any, alpha: float) -> float:
    """Lower end of the coverage axis: a multiple of 0.05 at least 0.03 below every finite coverage and 1 - α."""
    import numpy as np

    cov = np.asarray(coverage, dtype=float)
    finite = cov[np.isfinite(cov)]
    low = float(finite.min()) if finite.size else 1.0
    if np.isfinite(alpha):
        low = min(low, 1.0 - float(alpha))
    return max(0.0, float(np.floor(round((low - 0.03) / 0.05, 9)) * 0.05))


def plot_coverage(
    report: dict[str, Any],
    path: Path,
    *,
    dataset: str | None = None,
    alpha: float | None = None,
    deltas: Any = None,
) -> None:
    """Two-panel figure: coverage per group per method with the 1 - α line, and mean set size per group.

    Parameters
    ----------
    report : dict
        ``results.json``'s report: ``methods`` (each with ``group_coverage``, ``group_set_size``,
        ``marginal_coverage``, ``marginal_set_size``, ``private``), ``groups.names``, ``alpha``,
        ``set_size_label`` ("interval length" for regression) and ``config`` (the run config).
    path : pathlib.Path
        PNG to write.
    dataset, alpha, deltas : optional
        Shown in the title; by default read from ``report`` (``alpha``) and ``report["config"]`` (``dataset``,
        ``outputs-path``, ``deltas``).

    Notes
    -----
    The coverage axis starts below the smallest coverage shown (and below 1 - α), so no bar is cut; a group
    without test points (coverage NaN) is labelled "no test points" instead of being left blank.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = report.get("methods", {}) or {}
    names = list((report.get("groups") or {}).get("names") or [])
    n_groups = max((len(m.get("group_coverage", [])) for m in methods.values()), default=0)
    if len(names) != n_groups:
        names = [f"G{g + 1}" for g in range(n_groups)]
    alpha_v = _as_float(alpha if alpha is not None else report.get("alpha", (report.get("config") or {}).get("alpha")))
    size_label = str(report.get("set_size_label") or "set size")
    n_methods = max(len(methods), 1)
    cov = np.full((n_methods, n_groups), np.nan)
    size = np.full((n_methods, n_groups), np.nan)
    for i, m in enumerate(methods.values()):
        c = [_as_float(v) for v in m.get("group_coverage", [])]
        z = [_as_float(v) for v in m.get("group_set_size", [])]
        cov[i, : len(c)] = c
        size[i, : len(z)] = z
    empty = np.all(np.isnan(cov), axis=0) if n_groups else np.zeros(0, dtype=bool)

    y_low = _coverage_floor(cov, alpha_v)

    width = 0.8 / n_methods
    label_in = 0.1 * max((len(str(n)) for n in names), default=0)  # inches per group the tick labels need
    x = np.arange(n_groups)
    colors = plt.get_cmap("tab10" if n_methods <= 10 else "tab20")
    fig, (ax_c, ax_s) = plt.subplots(
        2, 1, sharex=True, figsize=(1.5 + max(n_groups, 1) * max(0.45 + 0.13 * n_methods, label_in), 6.0),
        gridspec_kw={"height_ratios": [3, 2]},
    )
    finite_size = size[np.isfinite(size)]
    size_top = float(finite_size.max()) * 1.15 if finite_size.size and finite_size.max() > 0 else 1.0
    for i, (name, m) in enumerate(methods.items()):
        private = m.get("private", True)
        what = "length" if size_label == "interval length" else "size"
        label = (f"{name}{'' if private else ' (not private)'}: coverage {_fmt(m.get('marginal_coverage'))} %, "
                 f"{what} {_fmt(m.get('marginal_set_size'), pct=False)}")
        pos = x + (i - (n_methods - 1) / 2) * width
        style = {"color": colors(i % colors.N), "hatch": None if private else "//", "edgecolor": "white",
                 "linewidth": 0.5}
        ax_c.bar(pos, np.where(np.isfinite(cov[i]), cov[i] - y_low, 0.0), width, bottom=y_low, label=label, **style)
        shown = np.where(np.isfinite(size[i]), size[i], np.where(np.isinf(size[i]), size_top, 0.0))
        ax_s.bar(pos, shown, width, **style)
        for g in range(n_groups):
            if empty[g]:
                continue
            if np.isnan(cov[i, g]):
                ax_c.text(pos[g], y_low, "n/a", rotation=90, ha="center", va="bottom", fontsize=6)
            elif cov[i, g] <= y_low + 0.01 * (1 - y_low):  # a bar too short to see: say its value
                ax_c.text(pos[g], y_low, f"{cov[i, g]:.2f}", rotation=90, ha="center", va="bottom", fontsize=6)
            if np.isinf(size[i, g]):
                ax_s.text(pos[g], size_top, "∞", ha="center", va="bottom", fontsize=8)
    for g in np.flatnonzero(empty):
        for ax, y in ((ax_c, (y_low + 1.0) / 2), (ax_s, size_top / 2)):
            ax.text(x[g], y, "no test points\nin this group", ha="center", va="center", fontsize=8, color="0.35",
                    bbox={"boxstyle": "round", "facecolor": "0.95", "edgecolor": "0.7"})
    if np.isfinite(alpha_v):
        ax_c.axhline(1 - alpha_v, color="k", ls="--", lw=1.2, label=f"target 1 - α = {1 - alpha_v:g}", zorder=3)
    ax_c.set_ylim(y_low, 1.0 + 0.02 * (1.0 - y_low) + 0.005)
    ax_c.set_ylabel("coverage per group")
    ax_c.grid(axis="y", alpha=0.3)
    ax_s.set_ylim(0.0, size_top * 1.08)
    ax_s.set_ylabel(f"mean {size_label}")
    ax_s.grid(axis="y", alpha=0.3)
    ax_s.set_xticks(x)
    ax_s.set_xticklabels([f"{n}\n(empty)" if e else str(n) for n, e in zip(names, empty)])
    ax_s.set_xlabel("group")
    ax_c.set_title(_plot_title(report, dataset, alpha, deltas), fontsize=10)
    handles, labels = ax_c.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False,
               title="method (marginal)", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")  # "tight" keeps the legend placed outside the axes
    plt.close(fig)


def write_predictors(predictors: dict[str, Any], arrays: Any, results_dir: str | Path) -> dict[str, Any]:
    """Write predictor_<NAME>.json per method and model.npz (the calibrated model); return the file paths.

    Called as soon as calibration finishes, before the evaluation round, so nothing computed is lost.
    """
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {"predictors": {}}
    for name, pred in predictors.items():
        p = out / f"predictor_{name}.json"
        save_predictor(pred, p)
        files["predictors"][name] = str(p)
    if len(arrays or {}) > 0:
        model_path = out / "model.npz"
        np.savez(model_path, **{k: v.numpy() for k, v in arrays.items()})
        files["model"] = str(model_path)
    return files


def write_results(results: dict[str, Any], files: dict[str, Any], results_dir: str | Path, plot: bool = True) -> dict:
    """Write results.json (atomically), results.md and, with ``plot``, coverage.png; return all file paths."""
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = dict(files)
    md = out / "results.md"
    md.write_text("# Conformal calibration results\n\n" + format_table(results))
    files["markdown"] = str(md)
    if plot:
        png = out / "coverage.png"
        plot_coverage(results, png)
        files["plot"] = str(png)
    files["json"] = str(out / "results.json")
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(to_jsonable({**results, "files": files}), indent=1))
    tmp.replace(out / "results.json")  # atomic: watchers never read a half-written file
    return files
