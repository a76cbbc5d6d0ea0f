"""Class-conditional and set-valued methods in the shared calibration round (adapters, payloads, Flower)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flwr_gcfcp.methods import (
    client_payload,
    fit_all,
    make_calibrators,
    predictor_arrays,
    thresholds_from_arrays,
)
from flwr_gcfcp.methods.classcond import FederatedClassConditionalCP, fit_federated_in_process as cc_fit, split_clustering
from flwr_gcfcp.methods import ArraysPredictor, parse_method_spec, set_mask_from_arrays
from flwr_gcfcp.core.groups import parse_groups
from flwr_gcfcp.core.scores import make_score
from flwr_gcfcp.methods.setvalued import SetValuedClassifier, fbeta_threshold
from flwr_gcfcp.methods.setvalued import fit_federated_in_process as sv_fit
from flwr_gcfcp.core.summaries import PayloadError
from flwr_gcfcp.app.status import latest_run

L = 10
GROUPS = parse_groups("0-3;2-5;4-7;6-9", n_labels=L)


def _clients(seed=0, sizes=(300, 200, 250, 150, 100), n_labels=L):
    """Label-skewed clients: probabilities with class-dependent difficulty, labels, LAC scores."""
    rng = np.random.default_rng(seed)
    out = []
    for k, n in enumerate(sizes):
        conc = rng.dirichlet(np.full(n_labels, 0.5))
        y = rng.choice(n_labels, size=n, p=conc)
        z = rng.normal(size=(n, n_labels))
        z[np.arange(n), y] += 1.0 + 0.4 * (y % 4)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        out.append((p, y))
    return out


def _round(cals, clients, score="softmax"):
    sc = make_score(score)
    payloads = {}
    for k, (p, y) in enumerate(clients):
        s = sc.calibration_scores(p, y, rng=k)
        payloads[f"c{k}"] = client_payload(
            cals, s, p, pi_k=1 / len(clients), n_clients=len(clients), labels=y, probs=p, rng=[0, k, 3]
        )
    return payloads


@pytest.mark.parametrize("score", ["softmax", "aps", "raps"])
def test_class_conditional_adapters_equal_direct_federated_fits(score):
    clients = _clients(1)
    cals = make_calibrators(["standard", "classwise", "clustered", "clustered:gamma=0.3:clusters=3"], GROUPS, 0.1)
    payloads = _round(cals, clients, score)
    assert {k.split("/")[0] for k in payloads["c0"]} == {"ccclass250", "ccclust250", "ccclust250_g0.3"}
    report = fit_all(cals, payloads)
    assert not report.excluded and not report.failed_methods
    sc = make_score(score)
    scores = [sc.calibration_scores(p, y, rng=k) for k, (p, y) in enumerate(clients)]
    labels = [y for _, y in clients]
    for name, method in (("standard", "standard"), ("classwise", "classwise")):
        direct = cc_fit(FederatedClassConditionalCP(method, 0.1, L, delta=250), scores, labels)
        np.testing.assert_array_equal(report.calibrators[name].label_thresholds, direct.thresholds_)
    for name, gamma, m in (("clustered", L / (L + 75), None), ("clustered_gamma0.3_clusters3", 0.3, 3)):
        masks = [split_clustering(y, gamma, np.random.default_rng([0, k, 3])) for k, y in enumerate(labels)]
        direct = cc_fit(
            FederatedClassConditionalCP("clustered", 0.1, L, delta=250, gamma=gamma, n_clusters=m), scores, labels, masks
        )
        cal = report.calibrators[name]
        np.testing.assert_array_equal(cal.label_thresholds, direct.thresholds_)
        np.testing.assert_array_equal(cal.model.class_to_cluster_, direct.class_to_cluster_)
        # the evaluation-round rule equals the direct predict
        p_test, _ = _clients(9, sizes=(400,))[0]
        sm = sc.score_matrix(p_test, rng=0)
        np.testing.assert_array_equal(set_mask_from_arrays(predictor_arrays(cal), sm, p_test, GROUPS), direct.predict(sm))
    assert report.calibrators["clustered_gamma0.3_clusters3"].model.n_clusters_ == 3


def test_clustered_adapter_null_cluster_fallback_equals_standard_on_proper_set():
    """20 classes, 18 with 8 points (never 9 clustering points), 2 with 200: K_c = 2 on every split.

    The default heuristic gives M = ⌊(2/77)·9/2⌋ = 0 and ``clusters=2`` gives M = K_c: both fall back to the null
    cluster, so every threshold is federated standard CP's on the proper points; ``clusters=1`` too (M <= 1).
    """
    n_labels, gamma = 20, 20 / 95
    rng = np.random.default_rng(5)
    y_all = np.repeat(np.arange(n_labels), np.where(np.arange(n_labels) < 2, 200, 8))
    client = rng.permutation(np.arange(y_all.size) % 3)
    groups = parse_groups("0-9;10-19", n_labels=n_labels)
    clients = []
    for k in range(3):
        y = y_all[client == k]
        z = rng.normal(size=(y.size, n_labels))
        z[np.arange(y.size), y] += 2.0
        clients.append((np.exp(z) / np.exp(z).sum(axis=1, keepdims=True), y))
    cals = make_calibrators(["clustered", "clustered:clusters=2", "clustered:clusters=1"], groups, 0.1)
    report = fit_all(cals, _round(cals, clients))
    assert not report.excluded and not report.failed_methods
    sc = make_score("softmax")
    scores = [sc.calibration_scores(p, y, rng=k) for k, (p, y) in enumerate(clients)]
    masks = [split_clustering(y, gamma, np.random.default_rng([0, k, 3])) for k, (_, y) in enumerate(clients)]
    standard = cc_fit(
        FederatedClassConditionalCP("standard", 0.1, n_labels, delta=250),
        [s[~m] for s, m in zip(scores, masks)], [y[~m] for (_, y), m in zip(clients, masks)],
    )
    n_clust = sum(int(m.sum()) for m in masks)
    for name, m_req, reason in (
        ("clustered", 0, "M = 0 <= 1"), ("clustered_clusters2", 2, "M = 2 >= 2 clusterable"), ("clustered_clusters1", 1, "<= 1"),
    ):
        cal = report.calibrators[name]
        np.testing.assert_array_equal(cal.label_thresholds, standard.thresholds_)
        info = json.loads(json.dumps(cal.info()))
        assert info["fallback"] is True and reason in info["null_cluster_reason"], (name, info["null_cluster_reason"])
        assert info["n_clusters"] == 0 and info["n_clusters_requested"] == m_req and info["n_clusterable"] == 2
        assert info["null_classes"] == list(range(n_labels)) and info["gamma"] == pytest.approx(gamma)
        assert info["clustering_fraction"] == pytest.approx(n_clust / y_all.size)
    # the non-fallback case reports fallback False
    cals = make_calibrators(["clustered:gamma=0.3:clusters=3"], GROUPS, 0.1)
    info = fit_all(cals, _round(cals, _clients(1))).calibrators["clustered_gamma0.3_clusters3"].info()
    assert info["fallback"] is False and info["null_cluster_reason"] is None and info["n_clusters"] == 3
    assert info["gamma"] == 0.3


def test_set_valued_adapters_equal_direct_federated_fits():
    clients = _clients(2)
    probs = [p for p, _ in clients]
    labels = [y for _, y in clients]
    methods = ["avg_size:2", "hybrid:3:1.5", "avg_error", "avg_error:0.05:conservative=true", "pointwise:0.1",
               "topk:2", "penalized:0.2", "fbeta", "fbeta:2:delta=1e9", "avg_size:2:rule=exact_size",
               "hybrid:3:1.5:rule=exact_size", "pointwise:0.1:offset=sqrt", "pointwise:0.05:ts=false:offset=0.02"]
    cals = make_calibrators(methods, GROUPS, 0.1)
    assert list(cals) == ["avg_size_2", "hybrid_3_1.5", "avg_error", "avg_error_0.05_conservativetrue", "pointwise_0.1",
                          "topk_2", "penalized_0.2", "fbeta", "fbeta_2_delta1000000000", "avg_size_2_ruleexact_size",
                          "hybrid_3_1.5_ruleexact_size", "pointwise_0.1_offsetsqrt", "pointwise_0.05_tsfalse_offset0.02"]
    report = fit_all(cals, _round(cals, clients))
    assert not report.excluded and not report.failed_methods
    direct = {
        "avg_size_2": sv_fit(SetValuedClassifier("average_size", k_bar=2), probs),
        "hybrid_3_1.5": sv_fit(SetValuedClassifier("hybrid_size", k=3, k_bar=1.5), probs),
        "avg_error": sv_fit(SetValuedClassifier("average_error", epsilon=0.1), probs, labels),
        "avg_error_0.05_conservativetrue": sv_fit(
            SetValuedClassifier("average_error", epsilon=0.05, conservative=True), probs, labels
        ),
        "pointwise_0.1": sv_fit(SetValuedClassifier("pointwise_error", epsilon=0.1), probs, labels),
        "topk_2": SetValuedClassifier("top_k", k=2),
        "penalized_0.2": SetValuedClassifier("penalized", lam=0.2),
        "avg_size_2_ruleexact_size": sv_fit(SetValuedClassifier("average_size", k_bar=2, size_rule="exact_size"), probs),
        "hybrid_3_1.5_ruleexact_size": sv_fit(
            SetValuedClassifier("hybrid_size", k=3, k_bar=1.5, size_rule="exact_size"), probs
        ),
        "pointwise_0.1_offsetsqrt": sv_fit(SetValuedClassifier("pointwise_error", epsilon=0.1, offset="sqrt"), probs, labels),
        "pointwise_0.05_tsfalse_offset0.02": SetValuedClassifier(
            "pointwise_error", epsilon=0.05, temperature_scaling=False, offset=0.02
        ),
    }
    p_test = _clients(9, sizes=(500,))[0][0]
    for name, model in direct.items():
        cal = report.calibrators[name]
        assert getattr(cal.model, "threshold_", None) == getattr(model, "threshold_", None), name
        assert getattr(cal.model, "temperature_", None) == getattr(model, "temperature_", None), name
        assert getattr(cal.model, "offset_", None) == getattr(model, "offset_", None), name
        mask = set_mask_from_arrays(predictor_arrays(cal), None, None, None, probs=p_test)
        np.testing.assert_array_equal(mask, model.predict(p_test), err_msg=name)
        np.testing.assert_array_equal(mask, cal.predict(None, None, probs=p_test), err_msg=name)
    # the default size rule is the survey's Ĝ⁻¹ (one order statistic more than exact_size: a lower threshold)
    for base in ("avg_size_2", "hybrid_3_1.5"):
        assert report.calibrators[base].model.threshold_ < report.calibrators[f"{base}_ruleexact_size"].model.threshold_
    assert report.calibrators["pointwise_0.1_offsetsqrt"].model.offset_ == np.sqrt(L / sum(len(y) for y in labels))
    # F_beta: one round on merged digests; exact root when the digests keep every point, close at delta = 250
    pooled = np.concatenate(probs)
    assert report.calibrators["fbeta_2_delta1000000000"].model.threshold_ == pytest.approx(fbeta_threshold(pooled, 2), abs=1e-12)
    two_round = sv_fit(SetValuedClassifier("f_beta", beta=1.0), probs)
    assert report.calibrators["fbeta"].model.threshold_ == pytest.approx(two_round.threshold_, abs=2e-3)
    # the all-probabilities digest is shared by avg_size and fbeta (one block)
    kinds = {k.split("/")[0] for k in _round(make_calibrators(["avg_size:2", "fbeta"], GROUPS, 0.1), clients)["c0"]}
    assert kinds == {"svprobs250"}


def test_method_syntax_errors_name_the_value():
    bad = {
        "topk": "missing k",
        "topk:2.5": "'2.5'",
        "topk:10": "k must be < the number of labels",
        "topk:0": "k must be an integer >= 1",
        "avg_size:0": "k_bar must be a number in (0, L)",
        "avg_size:12": "k_bar must be in (0, L=10)",
        "hybrid:3:4": "k_bar must be in (0, k=3)",
        "fbeta:-1": "beta must be a finite number > 0",
        "pointwise:1.5": "epsilon must be a number in (0, 1)",
        "penalized:abc": "'abc'",
        "clustered:foo=1": "unknown option 'foo'",
        "clustered:gamma=2": "gamma must be in [0, 1]",
        "classwise:3": "too many values",
        "avg_error:conservative=maybe": "'maybe'",
        "avg_size:delta=5:2": "after a key=value option",
        "avg_size:2:rule=median": "size_rule must be one of",
        "hybrid:3:1.5:rule=": "size_rule must be one of",
        "pointwise:offset=-0.1": "offset must be a finite number >= 0",
        "pointwise:offset=abc": "'abc'",
        "pointwise:ts=false:offset=sqrt": "needs temperature_scaling=True",
        "topk:2:rule=survey": "unknown option 'rule'",
        "no_such_method": "choose from",
    }
    for spec, msg in bad.items():
        with pytest.raises(ValueError) as err:
            make_calibrators([spec], GROUPS, 0.1)
        assert msg in str(err.value), (spec, str(err.value))
        if spec != "no_such_method":
            assert repr(spec) in str(err.value), spec
    assert parse_method_spec("gcfcp") is None
    assert parse_method_spec("average_size:2")[2] == "avg_size_2"
    assert parse_method_spec("hybrid_size:3:1.50")[2] == "hybrid_3_1.5"


def test_labels_and_probs_are_required_and_malformed_blocks_exclude_the_client():
    clients = _clients(3)
    cals = make_calibrators(["classwise", "avg_size:2", "fedcp"], GROUPS, 0.1)
    p, y = clients[0]
    with pytest.raises(ValueError, match="needs the true labels"):
        client_payload(cals, 1 - p[np.arange(len(y)), y], p)
    with pytest.raises(ValueError, match="needs the probability rows"):
        client_payload(make_calibrators(["avg_size:2"], GROUPS, 0.1), np.zeros(3), None, labels=[0, 1, 2])
    payloads = _round(cals, clients)
    atoms = payloads["c1"]["ccclass250/atoms"].astype(np.int64)
    atoms[1] *= 2  # each class claims twice the points its cluster counts hold
    payloads["c1"]["ccclass250/atoms"] = atoms
    data = payloads["c2"]["svprobs250/data"].copy()
    data[:8] = np.frombuffer(np.array([np.nan]).tobytes(), np.uint8)  # the digest's first mean
    payloads["c2"]["svprobs250/data"] = data
    del payloads["c3"]["ccclass250/atoms"]
    report = fit_all(cals, payloads)
    assert set(report.excluded) == {"c1", "c2", "c3"} and report.used == ["c0", "c4"]
    assert "counts sum to" in report.excluded["c1"] and "NaN" in report.excluded["c2"]
    assert "missing field 'atoms'" in report.excluded["c3"]
    with pytest.raises(PayloadError, match="set_mask_from_arrays"):
        thresholds_from_arrays(predictor_arrays(report.calibrators["classwise"]), p, GROUPS)


def test_saved_predictor_round_trips(tmp_path):
    clients = _clients(4)
    cals = make_calibrators(["classwise", "hybrid:3:1.5", "pointwise:0.1", "pointwise:0.1:offset=sqrt"], GROUPS, 0.1)
    report = fit_all(cals, _round(cals, clients))
    p_test = _clients(8, sizes=(200,))[0][0]
    sm = make_score("softmax").score_matrix(p_test)
    for name, cal in report.calibrators.items():
        path = tmp_path / f"predictor_{name}.json"
        path.write_text(json.dumps(cal.predictor()))
        loaded = ArraysPredictor.load(path)
        np.testing.assert_array_equal(loaded.predict(sm, probs=p_test), cal.predict(sm, None, probs=p_test))
    # evaluation-round arrays without the "offset" entry (sent by an older server) still apply, with r = 0
    old = report.calibrators["pointwise_0.1"].predictor_arrays()
    assert old.pop("offset").tolist() == [0.0]
    np.testing.assert_array_equal(
        set_mask_from_arrays(old, probs=p_test), report.calibrators["pointwise_0.1"].predict(sm, None, probs=p_test)
    )
    with_offset = report.calibrators["pointwise_0.1_offsetsqrt"]
    assert with_offset.predictor()["arrays"]["offset"] == [with_offset.model.offset_] and with_offset.model.offset_ > 0


def test_flower_round_runs_class_conditional_and_set_valued_methods(tmp_path):
    """Digits default in-process: results carry the new methods; thresholds equal the core's in-process fit."""
    import torch

    from flwr_gcfcp import make_score, parse_groups
    from flwr_gcfcp.app import server_app, torch_model
    from flwr_gcfcp.app.client_app import app as client_app
    from flwr_gcfcp.app.config import AppConfig
    from flwr_gcfcp.app.partitions import load_client_data
    from flwr_gcfcp.flower.client import client_rng
    from flwr_gcfcp.flower.inprocess import InProcessGrid
    from flwr_gcfcp.methods import make_calibrators

    n_threads = torch.get_num_threads()
    try:
        cfg = AppConfig.from_mapping(
            {
                "results-dir": str(tmp_path / "results"),
                "num-server-rounds": 1,
                "calibration-timeout": 5.0,
                "methods": "gcfcp,fedcp,classwise,clustered,avg_size:2,topk:2",
            }
        )
        result = server_app.run(InProcessGrid(client_app, 5), cfg)
        out = latest_run(tmp_path / "results")
        data = json.loads((out / "results.json").read_text())
        names = {"gcfcp_delta250", "fedcp", "classwise", "clustered", "avg_size_2", "topk_2"}
        assert set(data["methods"]) == names and not data["failed_methods"] and not data["excluded_clients"]
        for name in names:
            m = data["methods"][name]
            assert 0 <= m["marginal_coverage"] <= 1 and len(m["group_coverage"]) == 4
            assert len(m["class_coverage"]) == 10 and isinstance(m["covgap"], float)
        assert data["methods"]["topk_2"]["marginal_set_size"] == pytest.approx(2.0)
        assert data["methods"]["clustered"]["fit"]["gamma"] == pytest.approx(10 / 85)
        md = (out / "results.md").read_text()
        assert "CovGap" in md and "| clustered |" in md and "| avg_size_2 |" in md

        # the core, in-process, on the same partitions, seed and final model
        state = dict(np.load(out / "model.npz"))
        def cals():
            return make_calibrators(cfg.methods.split(","), parse_groups(cfg.groups, n_labels=10), cfg.alpha, [250.0])

        model = torch_model.make_model(10)
        model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()})
        payloads = {}
        for pid in range(5):
            d = load_client_data(cfg, pid, 5)
            probs = torch_model.predict_proba(model, d.x_cal)
            scores = make_score(cfg.score).calibration_scores(probs, d.y_cal, rng=client_rng(cfg.seed, pid, "cal"))
            payloads[str(pid)] = client_payload(
                cals(), scores, probs, pi_k=0.2, n_clients=5,
                labels=d.y_cal, probs=probs, rng=client_rng(cfg.seed, pid, "split"),
            )
        core = fit_all(cals(), payloads, pi={str(p): 0.2 for p in range(5)})
        for name in names:
            ours = {k: np.asarray(v) for k, v in predictor_arrays(result.calibrators[name]).items()}
            want = predictor_arrays(core.calibrators[name])
            assert set(ours) == set(want), name
            for key in want:
                np.testing.assert_array_equal(ours[key], want[key], err_msg=f"{name}/{key}")
        saved = json.loads((out / "predictor_classwise.json").read_text())
        np.testing.assert_array_equal(
            np.asarray(saved["arrays"]["label_thresholds"], dtype=float), core.calibrators["classwise"].label_thresholds
        )
    finally:
        torch.set_num_threads(n_threads)
