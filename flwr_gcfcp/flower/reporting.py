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


def plot_coverage(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = report.get("methods", {})
    names = list(report.get("groups", {}).get("names") or [])
    n_groups = max((len(m.get("group_coverage", [])) for m in methods.values()), default=0)
    if len(names) != n_groups:
        names = [f"G{g + 1}" for g in range(n_groups)]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * max(n_groups, 1) + 0.3 * len(methods), 3.6))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(n_groups)
    for i, (name, m) in enumerate(methods.items()):
        cov = [float(v) if v is not None else float("nan") for v in m.get("group_coverage", [])]
        label = name if m.get("private", True) else f"{name} (not private)"
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, cov, width, label=label)
    alpha = report.get("alpha")
    if alpha is not None:
        ax.axhline(1 - float(alpha), color="k", ls="--", lw=1, label=f"1 - α = {1 - float(alpha):g}")
        ax.set_ylim(max(0.0, 1 - 4 * float(alpha)), 1.02)
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    ax.set_ylabel("coverage")
    ax.set_title("Per-group coverage")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
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
