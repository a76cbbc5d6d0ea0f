"""Write the conformal results of a Flower run: results.json, results.md, coverage.png, predictor JSON files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


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
    excluded = report.get("excluded_clients", [])
    if excluded:
        lines.append("")
        lines.append("Excluded clients:")
        for e in excluded:
            lines.append(f"- {e.get('client')} ({e.get('phase')}): {e.get('reason')}")
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


def save_predictor(predictor: Any, path: Path) -> None:
    """Save a core predictor (a JSON-able dict, or an object with its own serialiser) as JSON."""
    if isinstance(predictor, dict):
        path.write_text(json.dumps(_jsonable(predictor), indent=1))
        return
    for meth in ("save", "to_json_file"):
        fn = getattr(predictor, meth, None)
        if callable(fn):
            fn(str(path))
            return
    for meth in ("to_json",):
        fn = getattr(predictor, meth, None)
        if callable(fn):
            path.write_text(fn())
            return
    for meth in ("to_dict", "to_jsonable"):
        fn = getattr(predictor, meth, None)
        if callable(fn):
            path.write_text(json.dumps(fn(), indent=1))
            return
    raise TypeError(f"cannot serialise predictor of type {type(predictor).__name__} to JSON")


def plot_coverage(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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


def write_results(result: Any, results_dir: str | Path, alpha: float | None = None, plot: bool = True) -> dict:
    """Write results.json, results.md, coverage.png and predictor_<method>.json; return the file paths."""
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = result.report
    files: dict[str, Any] = {"predictors": {}}
    for name, pred in result.predictors.items():
        p = out / f"predictor_{name}.json"
        save_predictor(pred, p)
        files["predictors"][name] = str(p)
    if len(getattr(result, "arrays", {}) or {}) > 0:
        import numpy as np

        model_path = out / "model.npz"
        np.savez(model_path, **{k: v.numpy() for k, v in result.arrays.items()})
        files["model"] = str(model_path)
    md = out / "results.md"
    md.write_text("# Conformal calibration results\n\n" + format_table(report))
    files["markdown"] = str(md)
    if plot:
        png = out / "coverage.png"
        plot_coverage(report, png)
        files["plot"] = str(png)
    files["json"] = str(out / "results.json")
    report = {**report, "files": files}
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, default=_default))
    tmp.replace(out / "results.json")  # atomic: watchers never read a half-written file
    return files


def _jsonable(obj: Any) -> Any:
    try:
        from flwr_gcfcp.core.metrics import to_jsonable
    except ImportError:  # pragma: no cover
        return json.loads(json.dumps(obj, default=_default))
    return to_jsonable(obj)


def _default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, float) and math.isinf(o):
        return "inf"
    return str(o)
