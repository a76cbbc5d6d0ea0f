"""Simulations: every experiment of ``python -m simulations.reproduce`` on a tiny configuration.

Experiments on the shared real data (``../shared/data`` or ``$FLWR_GCFCP_DATA``) skip with a message naming the missing
file when it is absent; the regression, ``scores`` (on an npz written here) and report paths run everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simulations import report
from simulations.mc import classification_draw_fn, parse_client_classes
from flwr_gcfcp.app.regression import (
    RegressionSetting,
    client_mean_sd,
    fit_linear,
    sample_client,
    sample_covariates,
    sample_mixture,
)
from simulations.regression import regression_draw_fn
from simulations.reproduce import (
    CIFAR10_LOGITS,
    PATHMNIST_LOGPROBS,
    build_parser,
    default_client_classes,
    default_data_dir,
    default_label_windows,
    main,
)

CONF_DIR = Path(__file__).resolve().parent.parent / "simulations" / "conf"


def _core_or_skip():
    """The conformal core is part of the package: a failing import must fail the test, not skip it."""
    import flwr_gcfcp.methods  # noqa: F401
    import flwr_gcfcp.core.metrics  # noqa: F401


def _shared_or_skip(rel: str) -> Path:
    path = default_data_dir() / rel
    if not path.is_file():
        pytest.skip(
            f"shared data file {rel!r} not found at {str(path)!r}; set FLWR_GCFCP_DATA to the folder holding the "
            "shared data (see ../shared/data/README.md) to run this check"
        )
    return path


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _check_methods_block(payload: dict, n_groups: int) -> None:
    assert payload["methods"], "no methods in the JSON"
    for name, row in payload["methods"].items():
        for key in ("marginal_coverage", "group_coverage", "group_coverage_se", "group_set_size", "marginal_set_size"):
            assert key in row, (name, key)
        assert len(row["group_coverage"]) == n_groups
        assert len(row["group_coverage_se"]) == n_groups
        assert len(row["group_set_size"]) == n_groups
        assert 0.0 <= row["marginal_coverage"] <= 1.0


# ----------------------------------------------------------------------------------------------- pure helpers
def test_parse_client_classes_and_defaults():
    clients, owner = parse_client_classes("0,1;2,3;4-5;6,7;8", 9)
    assert clients == [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    assert owner.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    with pytest.raises(ValueError, match="client_classes"):
        parse_client_classes("0,1;1,2", 3)
    with pytest.raises(ValueError, match="client_classes"):
        parse_client_classes("0,1;5", 3)
    assert default_label_windows(10) == "0-3;2-5;4-7;6-9"
    assert default_client_classes(10) == "0,1;2,3;4,5;6,7;8,9"


def test_classification_draw_assigns_clients_by_true_label():
    rng = np.random.default_rng(0)
    n, L = 200, 4
    probs = rng.dirichlet(np.ones(L), size=n)
    labels = rng.integers(0, L, size=n)
    _, owner = parse_client_classes("0,1;2,3", L)
    draw = classification_draw_fn(1 - probs, labels, probs.argmax(1), owner, 120, 2)(np.random.default_rng(1))
    assert draw.cal_scores.shape == (120,)
    assert draw.test_score_matrix.shape == (80, L)
    assert set(np.unique(draw.cal_client)) <= {0, 1}
    assert np.all(draw.test_client == owner[draw.test_labels])


# ----------------------------------------------------------------------------------------------- regression
def test_regression_generator_matches_section_6_1():
    rng = np.random.default_rng(0)
    assert client_mean_sd(0, 4) == (0.5, 0.5)
    m3, s3 = client_mean_sd(3, 4)
    assert m3 == pytest.approx(4.5) and s3 == pytest.approx(0.8)
    x = sample_covariates(rng, 20000, 4.5, 0.8)
    assert x.min() >= 0.0 and x.max() <= 5.0
    xs = [sample_client(rng, k, 5000)[0].mean() for k in range(4)]
    assert xs == sorted(xs)  # client means increase with k
    x, y, c = sample_mixture(rng, 4000)
    assert set(np.unique(c)) == {0, 1, 2, 3}
    model = fit_linear(x, y)
    assert np.isfinite(model.intercept) and np.isfinite(model.slope)
    # E[Y | x] = sin^2(x) + 0.1 on average over the mixture: the intercept lands near the mean response.
    assert abs(np.mean(y) - np.mean(np.sin(x) ** 2 + 0.1)) < 0.3


def test_regression_draw_shapes():
    setting = RegressionSetting()
    draw = regression_draw_fn(setting)(np.random.default_rng(3))
    assert draw.cal_scores.shape == (sum(setting.n_per_client),)
    assert np.bincount(draw.cal_client).tolist() == list(setting.n_per_client)
    assert draw.test_score_matrix.shape == (setting.n_test, 1)
    assert np.all(draw.test_labels == 0)
    assert np.all(draw.cal_scores >= 0)


# ----------------------------------------------------------------------------------------------- report
def _fake_summary(d=4):
    return {
        "split_cp": {"marginal_coverage": 0.9, "marginal_coverage_se": 0.001, "group_coverage": [0.88, 0.85, 0.91, 0.94][:d],
                     "group_coverage_se": [0.001] * d, "group_set_size": [0.9] * d, "marginal_set_size": 0.93,
                     "bytes_per_client": 8000.0, "client_time_s": 1e-4, "fit_time_s": 1e-3, "predict_time_s": 1e-4},
        "gcfcp_delta250": {"marginal_coverage": 0.905, "marginal_coverage_se": 0.001,
                           "group_coverage": [0.899, 0.902, 0.905, 0.906][:d], "group_coverage_se": [0.002] * d,
                           "group_set_size": [0.96] * d, "marginal_set_size": 0.95, "bytes_per_client": 3000.0,
                           "client_time_s": 1e-4, "fit_time_s": 2e-3, "predict_time_s": 1e-4},
        "gcfcp_delta250_conservative": {"marginal_coverage": 0.91, "marginal_coverage_se": 0.001,
                                        "group_coverage": [0.91] * d, "group_coverage_se": [0.002] * d,
                                        "group_set_size": [0.97] * d, "marginal_set_size": 0.97,
                                        "bytes_per_client": 3000.0, "client_time_s": 1e-4, "fit_time_s": 2e-3,
                                        "predict_time_s": 1e-4},
    }


def test_report_table_marks_undercoverage():
    table = report.markdown_table(_fake_summary(), ["G1", "G2", "G3", "G4"], 0.1)
    assert "| Centralized CP | 0.900 | 0.880 ↓* (0.90) | 0.850 ↓* (0.90) | 0.910 (0.90) |" in table
    assert "0.899 ↓ (0.96)" in table  # below target, within 1.96 SE: marked but not significant
    assert "GC-FCP (δ=250, +π/δ)" in table
    assert report.display_name("gcfcp_delta2500") == "GC-FCP (δ=2500)"
    dtable = report.delta_table(_fake_summary(), ["G1", "G2", "G3", "G4"], 0.1)
    assert "| 250 | yes |" in dtable and "| 250 | no |" in dtable


def test_report_plots(tmp_path):
    s = _fake_summary()
    names = ["G1", "G2", "G3", "G4"]
    p = report.plot_group_coverage(s, names, 0.1, tmp_path / "a.png", title="t")
    assert p.stat().st_size > 1000
    p = report.plot_delta_ablation(s, names, 0.1, tmp_path / "d.png")
    assert p.stat().st_size > 1000
    a, b = report.plot_alpha_sweep([(0.2, s), (0.1, s)], names, tmp_path / "c.png", tmp_path / "z.png")
    assert a.stat().st_size > 1000 and b.stat().st_size > 1000
    x = np.linspace(0, 5, 11)
    p = report.plot_regression_intervals(x, x * 0, {"split_cp": np.ones(11)}, x, x, tmp_path / "r.png", [(0, 2)])
    assert p.stat().st_size > 1000
    p = report.plot_group_miscoverage(s, names, 0.1, tmp_path / "m.png")
    assert p.stat().st_size > 1000


# ----------------------------------------------------------------------------------------------- experiments
def _write_outputs_npz(path: Path, n=1200, L=6, seed=0, key="logits"):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, L, size=n)
    logits = rng.normal(size=(n, L))
    logits[np.arange(n), labels] += 2.5
    if key == "logits":
        np.savez(path, logits=logits.astype(np.float32), labels=labels)
    elif key == "log_probs":
        z = logits - logits.max(1, keepdims=True)
        np.savez(path, log_probs=z - np.log(np.exp(z).sum(1, keepdims=True)), labels=labels)
    return path


@pytest.mark.parametrize("key", ["logits", "log_probs"])
def test_scores_experiment_on_own_outputs(tmp_path, key):
    _core_or_skip()
    npz = _write_outputs_npz(tmp_path / "outs.npz", key=key)
    out = tmp_path / "out"
    rc = main(["scores", "--logits", str(npz), "--groups", "0-2;2-5", "--client-classes", "0,1;2,3;4,5",
               "--n-cal", "600", "--deltas", "25,250", "--mc", "2", "--seed", "1", "--out", str(out),
               "--no-progress", "--json", str(out / "s.json")])
    assert rc == 0
    payload = _load_json(out / "s.json")
    assert payload["experiment"] == "scores" and payload["mc"] == 2 and payload["alpha"] == 0.1
    _check_methods_block(payload, 2)
    names = set(payload["methods"])
    assert {"split_cp", "fedcp", "condcp", "centralized_gcfcp", "gcfcp_delta25", "gcfcp_delta250",
            "gcfcp_delta250_conservative"} <= names
    # π/25 > α = 0.1: the corrected level would exceed 1, so there is no conservative run at δ = 25 (and the table says so)
    assert "gcfcp_delta25_conservative" not in names
    assert "no row for δ ∈ {25}" in (out / "scores_outs.md").read_text()
    assert (out / "scores_outs.md").is_file() and (out / "scores_outs_group_coverage.png").is_file()


def test_runs_write_untracked_unless_update_results(tmp_path, monkeypatch, capsys):
    """A run without --out writes to the untracked folder; only --update-results touches the committed one."""
    import simulations.reproduce as rp

    _core_or_skip()
    committed, untracked = tmp_path / "committed", tmp_path / "untracked"
    monkeypatch.setattr(rp, "COMMITTED_RESULTS_DIR", committed)
    monkeypatch.setattr(rp, "UNTRACKED_RESULTS_DIR", untracked)
    npz = _write_outputs_npz(tmp_path / "outs.npz")
    common = ["scores", "--logits", str(npz), "--groups", "0-2;2-5", "--client-classes", "0,1;2,3;4,5",
              "--n-cal", "600", "--deltas", "250", "--methods", "split_cp", "--mc", "1", "--no-progress"]
    assert main(common) == 0
    assert (untracked / "scores_outs.json").is_file() and not committed.exists()
    assert main([*common, "--update-results"]) == 0
    assert (committed / "scores_outs.json").is_file()
    assert "--update-results" in _load_json(committed / "scores_outs.json")["command"]
    with pytest.raises(SystemExit) as exc:
        main([*common, "--update-results", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "--update-results" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_output_dir_defaults_point_where_documented():
    import simulations.reproduce as rp

    repo = Path(rp.__file__).resolve().parent.parent
    assert rp.output_dir(None, False) == repo / "results" / "simulations"
    assert rp.output_dir(None, True) == repo / "simulations" / "results"
    assert rp.output_dir("elsewhere", False) == Path("elsewhere")
    # the default folder is ignored by git, the committed one is not
    import subprocess

    ignored = subprocess.run(["git", "check-ignore", "-q", str(repo / "results" / "simulations" / "a.json")], cwd=repo)
    kept = subprocess.run(["git", "check-ignore", "-q", str(repo / "simulations" / "results" / "a.json")], cwd=repo)
    if ignored.returncode == 128:
        pytest.skip("not a git checkout")
    assert ignored.returncode == 0 and kept.returncode == 1


def test_scores_experiment_reports_missing_file(tmp_path, capsys):
    rc = main(["scores", "--logits", str(tmp_path / "nope.npz"), "--mc", "1", "--out", str(tmp_path)])
    assert rc == 2
    assert "not found" in capsys.readouterr().err


def test_missing_shared_data_is_a_clear_error(tmp_path, capsys):
    rc = main(["cifar10-table2", "--mc", "1", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert CIFAR10_LOGITS in err and "--data-dir" in err


def test_regression_fig3_tiny(tmp_path):
    _core_or_skip()
    rc = main(["regression-fig3", "--mc", "2", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    payload = _load_json(tmp_path / "regression_fig3.json")
    _check_methods_block(payload, 4)
    assert {"split_cp", "fedcp", "condcp", "centralized_gcfcp", "gcfcp_delta250"} <= set(payload["methods"])
    for name in ("regression_fig3.md", "regression_fig3a.png", "regression_fig3b.png", "regression_fig3c.png"):
        assert (tmp_path / name).is_file(), name
    width = payload["methods"]["split_cp"]["group_interval_width"]
    assert len(set(np.round(width, 9))) == 1  # one global threshold: same width in every group


def test_cifar10_table2_tiny(tmp_path):
    _core_or_skip()
    _shared_or_skip(CIFAR10_LOGITS)
    rc = main(["cifar10-table2", "--mc", "2", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    payload = _load_json(tmp_path / "cifar10_table2.json")
    _check_methods_block(payload, 4)
    expected = {"split_cp", "fedcp", "condcp", "centralized_gcfcp", "gcfcp_delta25"} | {
        f"gcfcp_delta{d}{s}" for d in (250, 2500) for s in ("", "_conservative")
    }
    assert expected <= set(payload["methods"])
    # Split CP's single threshold under-covers group 2 (predicted labels 2-5) on the real ResNet-56 outputs.
    assert payload["methods"]["split_cp"]["group_coverage"][1] < 0.89
    assert (tmp_path / "cifar10_table2.md").read_text().count("|") > 40


def test_pathmnist_table4_tiny(tmp_path):
    _core_or_skip()
    _shared_or_skip(PATHMNIST_LOGPROBS)
    rc = main(["pathmnist-table4", "--mc", "2", "--deltas", "250", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    payload = _load_json(tmp_path / "pathmnist_table4.json")
    _check_methods_block(payload, 5)


def test_cifar10_table5_tiny(tmp_path):
    _core_or_skip()
    _shared_or_skip(CIFAR10_LOGITS)
    rc = main(["cifar10-table5", "--mc", "2", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    payload = _load_json(tmp_path / "cifar10_table5.json")
    assert len(payload["group_names"]) >= 4
    _check_methods_block(payload, len(payload["group_names"]))


def test_alpha_sweep_tiny(tmp_path):
    _core_or_skip()
    _shared_or_skip(CIFAR10_LOGITS)
    rc = main(["alpha-sweep", "--dataset", "cifar10", "--alphas", "0.2,0.1", "--mc", "1", "--out", str(tmp_path),
               "--no-progress"])
    assert rc == 0
    payload = _load_json(tmp_path / "alpha_sweep.json")
    sweep = payload["datasets"]["cifar10"]["sweep"]
    assert [s["alpha"] for s in sweep] == [0.2, 0.1]
    assert (tmp_path / "alpha_sweep_cifar10_fig4a_coverage.png").is_file()


def test_delta_ablation_tiny(tmp_path):
    _core_or_skip()
    _shared_or_skip(CIFAR10_LOGITS)
    rc = main(["delta-ablation", "--deltas", "50,2500", "--mc", "1", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    payload = _load_json(tmp_path / "delta_ablation_cifar10.json")
    m = payload["methods"]
    assert {"gcfcp_delta50", "gcfcp_delta50_conservative", "gcfcp_delta2500", "gcfcp_delta2500_conservative"} <= set(m)
    assert m["gcfcp_delta50"]["bytes_per_client"] < m["gcfcp_delta2500"]["bytes_per_client"]
    assert (tmp_path / "delta_ablation_cifar10.png").is_file()


@pytest.mark.parametrize("experiment", ["class-conditional", "set-valued"])
def test_dispatch_to_classcond_experiments(tmp_path, experiment):
    from simulations import experiments_classcond as ecc

    assert callable(getattr(ecc, "run_class_conditional" if experiment == "class-conditional" else "run_set_valued"))
    _shared_or_skip(CIFAR10_LOGITS)
    extra = ["--n-avg", "10"] if experiment == "class-conditional" else []
    rc = main([experiment, "--mc", "1", "--out", str(tmp_path), "--no-progress", *extra])
    assert rc == 0


def test_parser_lists_every_experiment():
    parser = build_parser()
    for e in ("cifar10-table2", "pathmnist-table4", "regression-fig3", "cifar10-table5", "alpha-sweep",
              "delta-ablation", "scores", "class-conditional", "set-valued"):
        assert parser.parse_args([e]).experiment == e


def test_presets_use_known_run_config_keys():
    import tomllib

    pyproject = tomllib.loads((CONF_DIR.parent.parent / "pyproject.toml").read_text())
    known = set(pyproject["tool"]["flwr"]["app"]["config"])
    presets = sorted(CONF_DIR.glob("*.toml"))
    assert presets, "no presets in simulations/conf"
    for preset in presets:
        keys = set(tomllib.loads(preset.read_text()))
        assert keys <= known, f"{preset.name}: unknown keys {sorted(keys - known)}"
