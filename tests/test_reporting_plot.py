"""The coverage figure of a Flower run (``flwr_gcfcp.flower.reporting.plot_coverage``)."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest

from flwr_gcfcp.flower import reporting

matplotlib.use("Agg")


def _report(empty_group: bool = True) -> dict:
    cov_split = [0.0, 0.853, 0.95, None] if empty_group else [0.0, 0.853, 0.95, 0.91]
    return {
        "alpha": 0.1,
        "set_size_label": "set size",
        "groups": {"text": "confidence:3+rest", "names": ["[0.5, 0.67)", "[0.67, 0.83)", "[0.83, 1]", "rest"]},
        "config": {"dataset": "outputs", "outputs-path": "logits/cifar10_resnet56_test_logits.npz", "deltas": "25,250"},
        "methods": {
            "split_cp": {"group_coverage": cov_split, "group_set_size": [0.0, 0.7, 1.0, None if empty_group else 1.0],
                         "marginal_coverage": 0.9, "marginal_set_size": 0.93, "private": False},
            "gcfcp_delta250": {"group_coverage": [0.9, 0.91, 0.9, float("nan") if empty_group else 0.9],
                               "group_set_size": [2.5, 1.9, 1.0, float("nan") if empty_group else 1.0],
                               "marginal_coverage": 0.91, "marginal_set_size": 1.2, "private": True},
        },
    }


@pytest.fixture
def saved_figures(monkeypatch):
    """Keep every figure plot_coverage saves (it closes them afterwards)."""
    from matplotlib.figure import Figure

    figs = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        figs.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figs


def _texts(fig) -> list[str]:
    out = [t.get_text() for ax in fig.axes for t in ax.texts]
    out += [ax.get_title() for ax in fig.axes] + [ax.get_ylabel() for ax in fig.axes]
    out += [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
    out += [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    return out


def test_plot_with_empty_group_writes_png_and_marks_it(tmp_path, saved_figures):
    path = tmp_path / "coverage.png"
    reporting.plot_coverage(_report(), path)  # the positional signature of write_results still works
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    (fig,) = saved_figures
    texts = _texts(fig)
    assert sum("no test points" in t for t in texts) == 2  # coverage and set-size panels
    assert "rest\n(empty)" in texts
    title = fig.axes[0].get_title()
    assert "cifar10_resnet56_test_logits.npz" in title and "α = 0.1" in title and "δ = 25, 250" in title
    assert "mean set size" in texts
    assert any("split_cp (not private)" in t for t in texts) and any("target 1 - α = 0.9" in t for t in texts)
    assert "0.00" in texts  # split CP's zero coverage is labelled, not an invisible bar
    # two panels; the coverage axis starts below every bar (0.0 here) and ends above 1
    cov_ax, size_ax = fig.axes
    lo, hi = cov_ax.get_ylim()
    assert lo == 0.0 and hi > 1.0
    assert size_ax.get_ylim()[1] > 2.5
    # the legend sits outside the axes (to their right)
    fig.canvas.draw()
    legend_box = fig.legends[0].get_window_extent()
    assert legend_box.x0 >= cov_ax.get_window_extent().x1


def test_plot_title_from_keywords_and_interval_lengths(tmp_path, saved_figures):
    rep = _report(empty_group=False)
    rep["set_size_label"] = "interval length"
    rep["methods"]["gcfcp_delta250"]["group_set_size"][0] = "inf"
    path = tmp_path / "c.png"
    reporting.plot_coverage(rep, path, dataset="CIFAR-10 (FedAvg)", alpha=0.2, deltas=[250.0, 2500.0])
    assert path.is_file()
    (fig,) = saved_figures
    texts = _texts(fig)
    assert fig.axes[0].get_title() == "CIFAR-10 (FedAvg): α = 0.2 (target coverage 0.8), δ = 250, 2500"
    assert "mean interval length" in texts and "∞" in texts
    assert not any("no test points" in t for t in texts)


@pytest.mark.parametrize(
    "cov, alpha, floor",
    [([0.853, 0.9, 0.93], 0.1, 0.80), ([0.95, 0.97], 0.1, 0.85), ([0.0, 0.9], 0.1, 0.0), ([np.nan], 0.1, 0.85),
     ([0.88], float("nan"), 0.85), ([0.83], 0.1, 0.80)],
)
def test_coverage_floor_never_cuts_a_bar(cov, alpha, floor):
    got = reporting._coverage_floor(cov, alpha)
    assert math.isclose(got, floor, abs_tol=1e-12)
    finite = [c for c in cov if np.isfinite(c)] + ([1 - alpha] if np.isfinite(alpha) else [])
    assert all(got <= c - 0.03 + 1e-12 or got == 0.0 for c in finite)
