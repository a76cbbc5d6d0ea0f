"""Calibrators: equivalences, payload validation, exclusion, coverage over random splits, bad input."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from flwr_gcfcp.methods import (
    GCFCP,
    CentralizedGCFCP,
    CondCP,
    FedCP,
    FedCPQQ,
    MondrianCP,
    SplitCP,
    client_payload,
    fit_all,
    fit_in_process,
    make_calibrators,
    predictor_arrays,
    thresholds_from_arrays,
)
from flwr_gcfcp.core.groups import parse_groups
from flwr_gcfcp.core.metrics import aggregate_counts, coverage_report, covgap, evaluation_counts, frac_undercov
from flwr_gcfcp.core.quantiles import conformal_rank

GROUPS = parse_groups("0-3;2-5;4-7;6-9", n_labels=10)


def synthetic_clients(rng, n_per_client=(300, 200, 250, 150, 100), n_labels=10, n_test=0):
    """Scores and predicted labels for K clients each holding two true classes (paper-like heterogeneity)."""
    out = []
    for k, n in enumerate(n_per_client):
        true = rng.choice([2 * k % n_labels, (2 * k + 1) % n_labels], size=n)
        pred = np.where(rng.random(n) < 0.8, true, rng.integers(0, n_labels, n))
        # harder classes (higher k) get larger scores; misclassified points get large scores
        scores = rng.beta(1 + 0.3 * k, 6, n) + 0.5 * (pred != true) * rng.random(n)
        out.append((scores, pred, true))
    return out


def test_gcfcp_with_large_delta_equals_centralized_gcfcp_exactly():
    rng = np.random.default_rng(0)
    for trial in range(5):
        clients = synthetic_clients(rng)
        scores, preds = [c[0] for c in clients], [c[1] for c in clients]
        pi = rng.dirichlet(np.ones(5)).round(3).tolist() if trial % 2 else None
        central = fit_in_process(CentralizedGCFCP(GROUPS, 0.1), scores, preds, pi)
        fed = fit_in_process(GCFCP(GROUPS, 0.1, delta=1e7), scores, preds, pi)
        assert central.thresholds == fed.thresholds
        fed_union = fit_in_process(GCFCP(GROUPS, 0.1, delta=1e7, merge=False), scores, preds, pi)
        assert central.thresholds == fed_union.thresholds


def test_fedcp_digest_with_large_delta_equals_raw_weighted_rule():
    rng = np.random.default_rng(1)
    clients = synthetic_clients(rng)
    scores = [c[0] for c in clients]
    raw = fit_in_process(FedCP(0.1, None), scores)
    dig = fit_in_process(FedCP(0.1, 1e7), scores)
    assert raw.thresholds == dig.thresholds


def test_fedcp_with_fcp_weights_is_pooled_rank():
    rng = np.random.default_rng(2)
    clients = synthetic_clients(rng)
    scores = [c[0] for c in clients]
    ns = [s.size for s in scores]
    pi = [(n + 1) / (sum(ns) + len(ns)) for n in ns]
    cal = fit_in_process(FedCP(0.1, None), scores, pi=pi)
    k = math.ceil(0.9 * (sum(ns) + len(ns)) - 1e-12)  # ceil((1 - α)(N + K)), here not at a tie
    assert cal.thresholds[0] == np.sort(np.concatenate(scores))[k - 1]


def test_condcp_single_group_equals_split_cp():
    rng = np.random.default_rng(3)
    one = parse_groups("0-9", n_labels=10)
    for n in (9, 10, 50, 199):
        scores = rng.random(n)
        preds = rng.integers(0, 10, n)
        c = fit_in_process(CondCP(one, 0.1), [scores], [preds])
        s = fit_in_process(SplitCP(0.1), [scores])
        assert c.thresholds[1] == s.thresholds[0] == np.sort(scores)[conformal_rank(n, 0.1) - 1]


def test_mondrian_disjoint_groups():
    rng = np.random.default_rng(4)
    groups = parse_groups("0-4;5-9", n_labels=10)
    scores, preds = rng.random(300), rng.integers(0, 10, 300)
    cal = fit_in_process(MondrianCP(groups, 0.1), [scores[:100], scores[100:]], [preds[:100], preds[100:]])
    for g, labels in enumerate((range(0, 5), range(5, 10))):
        sel = np.isin(preds, list(labels))
        expected = np.sort(scores[sel])[conformal_rank(int(sel.sum()), 0.1) - 1]
        assert cal.thresholds[1 << g] == expected


def test_fedcp_qq_threshold_is_an_order_statistic_and_covers():
    rng = np.random.default_rng(5)
    covs = []
    for _ in range(300):
        scores = [rng.random(60) for _ in range(5)]
        cal = fit_in_process(FedCPQQ(0.1), scores)
        covs.append(np.mean(rng.random(400) <= cal.thresholds[0]))
    assert np.mean(covs) >= 0.9 - 3 * np.std(covs) / np.sqrt(len(covs))


def test_payload_is_deduplicated_and_round_trips_through_fit_all():
    rng = np.random.default_rng(6)
    clients = synthetic_clients(rng)
    cals = make_calibrators(["split_cp", "fedcp", "condcp", "centralized_gcfcp", "gcfcp", "mondrian"], GROUPS, 0.1, deltas=[25, 250])
    payloads = {f"c{k}": client_payload(cals, s, p, pi_k=0.2, n_clients=5) for k, (s, p, _) in enumerate(clients)}
    kinds = {key.split("/")[0] for key in payloads["c0"]}
    assert kinds == {"raw", "whole25", "digest25", "digest250"}
    report = fit_all(cals, payloads)
    assert not report.excluded and not report.failed_methods and len(report.used) == 5
    direct = fit_in_process(CentralizedGCFCP(GROUPS, 0.1), [c[0] for c in clients], [c[1] for c in clients])
    assert report.calibrators["centralized_gcfcp"].thresholds == direct.thresholds
    assert report.calibrators["gcfcp_delta250"].private
    assert not report.calibrators["condcp"].private


def test_malformed_payloads_are_excluded_and_pi_renormalised():
    rng = np.random.default_rng(7)
    clients = synthetic_clients(rng)
    cals = make_calibrators(["gcfcp"], GROUPS, 0.1, deltas=[250])
    payloads = {f"c{k}": client_payload(cals, s, p, pi_k=0.2, n_clients=5) for k, (s, p, _) in enumerate(clients)}
    atoms = payloads["c1"]["digest250/atoms"].astype(np.int64)
    atoms[1, 0] += 1  # the atom claims one point more than its cluster counts hold
    payloads["c1"]["digest250/atoms"] = atoms
    atoms = payloads["c2"]["digest250/atoms"].astype(np.int64)
    atoms[0] += 1000  # unknown atoms
    payloads["c2"]["digest250/atoms"] = atoms
    data = payloads["c3"]["digest250/data"].copy()
    data[:8] = np.frombuffer(np.array([np.nan]).tobytes(), np.uint8)  # the first atom's first mean
    payloads["c3"]["digest250/data"] = data
    del payloads["c4"]["digest250/data"]
    report = fit_all(cals, payloads, pi={f"c{k}": 0.2 for k in range(5)})
    assert report.used == ["c0"]
    assert set(report.excluded) == {"c1", "c2", "c3", "c4"}
    assert "counts sum to" in report.excluded["c1"]
    assert "unknown atom" in report.excluded["c2"]
    assert "NaN" in report.excluded["c3"]
    assert "missing" in report.excluded["c4"]
    assert report.pi == {"c0": 1.0}
    alone = fit_in_process(GCFCP(GROUPS, 0.1, 250), [clients[0][0]], [clients[0][1]])
    assert report.calibrators["gcfcp_delta250"].thresholds == alone.thresholds


def test_predictor_arrays_reproduce_thresholds_on_clients():
    rng = np.random.default_rng(8)
    clients = synthetic_clients(rng)
    cal = fit_in_process(GCFCP(GROUPS, 0.1, 250), [c[0] for c in clients], [c[1] for c in clients])
    preds = rng.integers(0, 10, 500)
    arrays = predictor_arrays(cal)
    assert np.array_equal(thresholds_from_arrays(arrays, preds, GROUPS), cal.thresholds_for(preds))
    json.dumps(cal.predictor())  # serialisable


@pytest.mark.parametrize("delta", [25, 250])
def test_group_coverage_over_random_splits(delta):
    """Per-group coverage >= 1 - α - π/δ on average over 150 random calibration/test splits.

    Monte Carlo tolerance: 3 standard errors of the mean over splits (one-sided).
    """
    rng = np.random.default_rng(10 + delta)
    alpha = 0.1
    covs = {"gcfcp": [], "conservative": [], "split": [], "central": []}
    for _ in range(150):
        data = synthetic_clients(rng, n_per_client=(120, 100, 80, 90, 110))
        test = synthetic_clients(rng, n_per_client=(80,) * 5)
        t_scores = np.concatenate([t[0] for t in test])
        t_pred = np.concatenate([t[1] for t in test])
        member = GROUPS.membership(t_pred)
        for name, cal in (
            ("gcfcp", GCFCP(GROUPS, alpha, delta)),
            ("conservative", GCFCP(GROUPS, alpha, delta, conservative=True) if math.pi / delta < alpha else None),
            ("split", SplitCP(alpha)),
            ("central", CentralizedGCFCP(GROUPS, alpha)),
        ):
            if cal is None:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit_in_process(cal, [d[0] for d in data], [d[1] for d in data])
            ok = t_scores <= cal.thresholds_for(t_pred, n=t_pred.size)
            covs[name].append([ok[member[:, g]].mean() for g in range(4)])
    gc = np.array(covs["gcfcp"])
    se = gc.std(axis=0, ddof=1) / np.sqrt(len(gc))
    assert np.all(gc.mean(axis=0) >= 1 - alpha - math.pi / delta - 3 * se), gc.mean(axis=0)
    # empirical check on these seeded data (not a guarantee): the digest moves group coverage by little against
    # centralized GC-FCP on the same splits (measured: within 0.004 at delta = 25)
    central = np.array(covs["central"]).mean(axis=0)
    assert np.all(np.abs(gc.mean(axis=0) - central) < 0.02), (gc.mean(axis=0), central)
    if covs["conservative"]:
        cons = np.array(covs["conservative"])
        se = cons.std(axis=0, ddof=1) / np.sqrt(len(cons))
        assert np.all(cons.mean(axis=0) >= 1 - alpha - 3 * se), cons.mean(axis=0)
    # the marginal method under-covers the hardest group: the test can tell the methods apart
    split = np.array(covs["split"]).mean(axis=0)
    assert split.min() < 1 - alpha - 0.01 < gc.mean(axis=0).min() + 0.01


def test_metrics_aggregate_with_mixture_weights():
    rng = np.random.default_rng(9)
    mask = rng.random((40, 10)) < 0.3
    labels = rng.integers(0, 10, 40)
    member = GROUPS.membership(rng.integers(0, 10, 40))
    a = evaluation_counts(mask[:10], labels[:10], member[:10])
    b = evaluation_counts(mask[10:], labels[10:], member[10:])
    agg = aggregate_counts({"a": a, "b": b}, {"a": 0.5, "b": 0.5})
    cov = mask[np.arange(40), labels]
    assert agg["marginal_coverage"] == pytest.approx(0.5 * cov[:10].mean() + 0.5 * cov[10:].mean())
    g0 = (0.5 * (cov[:10] & member[:10, 0]).sum() / 10 + 0.5 * (cov[10:] & member[10:, 0]).sum() / 30) / (
        0.5 * member[:10, 0].sum() / 10 + 0.5 * member[10:, 0].sum() / 30
    )
    assert agg["group_coverage"][0] == pytest.approx(g0)
    rep = coverage_report(mask, labels, member)
    assert rep["marginal_coverage"] == pytest.approx(cov.mean())
    assert covgap([0.9, 0.8, 1.0], 0.1) == pytest.approx(100 * (0 + 0.1 + 0.1) / 3)
    assert frac_undercov([0.9, 0.8, 0.79], 0.1) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: SplitCP(1.2), "alpha"),
        (lambda: GCFCP(GROUPS, 0.1, delta=0), "delta"),
        (lambda: GCFCP(GROUPS, 0.1, delta=-3), "delta"),
        (lambda: GCFCP(GROUPS, 0.1, delta=25, conservative=True), "pi/delta"),
        (lambda: make_calibrators(["nope"], GROUPS, 0.1), "unknown method"),
        (lambda: make_calibrators(["condcp"], None, 0.1), "needs groups"),
        (lambda: SplitCP(0.1).fit([]), "empty"),
        (lambda: SplitCP(0.1).summarize([0.1, np.nan]), "NaN"),
        (lambda: GCFCP(GROUPS, 0.1).summarize([0.1, 0.2], [1]), "features describe"),
        (lambda: SplitCP(0.1).predict(np.zeros((2, 3))), "not fitted"),
    ],
)
def test_bad_input_raises(build, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        build()


def test_too_few_points_gives_full_set_with_warning():
    with pytest.warns(UserWarning):
        cal = fit_in_process(SplitCP(0.1), [np.array([0.1, 0.2, 0.3])])
    assert cal.thresholds[0] == math.inf


def test_saved_predictor_builds_the_same_sets_and_solves_unseen_patterns(tmp_path):
    from flwr_gcfcp.core.groups import MatrixGroups
    from flwr_gcfcp.core.predictor import Predictor

    rng = np.random.default_rng(13)
    clients = synthetic_clients(rng)
    for cal in (GCFCP(GROUPS, 0.1, 250), CondCP(GROUPS, 0.1), SplitCP(0.1), FedCP(0.1, 250)):
        fit_in_process(cal, [c[0] for c in clients], [c[1] for c in clients])
        path = Predictor.from_calibrator(cal).save(tmp_path / f"{cal.name}.json")
        loaded = Predictor.load(path)
        scores = rng.random((300, 10)) * 1.2
        preds = rng.integers(0, 10, 300)
        assert np.array_equal(loaded.predict(scores, preds), cal.predict(scores, preds))
        assert loaded.method == cal.name and loaded.private == cal.private
    # matrix groups: a pattern never seen in calibration is solved from the saved coreset, exactly as the calibrator
    groups = MatrixGroups(3)
    member = rng.random((400, 3)) < 0.5
    member[~member.any(axis=1), 0] = True
    scores = rng.random(400)
    cal = fit_in_process(CondCP(groups, 0.1), [scores[member[:, 2] == 0]], [member[member[:, 2] == 0]])
    loaded = Predictor.load(Predictor.from_calibrator(cal).save(tmp_path / "m.json"))
    unseen = np.array([[True, True, True], [False, True, True]])
    assert np.array_equal(loaded.thresholds_for(unseen), cal.thresholds_for(unseen))


def test_predictor_rejects_foreign_json(tmp_path):
    from flwr_gcfcp.core.predictor import Predictor

    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a flwr-gcfcp predictor"):
        Predictor.load(tmp_path / "x.json")


def test_many_independent_groups_warn_about_degenerate_atoms():
    from fractions import Fraction

    from flwr_gcfcp.methods.group import DegenerateAtomsWarning, _warn_small_atoms
    from flwr_gcfcp.core.groups import pattern_keys, unique_keys

    rng = np.random.default_rng(14)
    member = rng.random((600, 12)) < 0.5  # 12 independent attributes: almost one pattern per point
    uniq, _, counts = unique_keys(pattern_keys(member))
    with pytest.warns(DegenerateAtomsWarning, match="one atom per point"):
        _warn_small_atoms("condcp", uniq, counts, Fraction(1, 10))
    uniq, _, counts = unique_keys(GROUPS.atom_keys(rng.integers(0, 10, 600)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateAtomsWarning)
        _warn_small_atoms("condcp", uniq, counts, Fraction(1, 10))


def test_predict_rejects_mismatched_features_and_conservative_alpha_is_rounded_down():
    from fractions import Fraction

    rng = np.random.default_rng(15)
    clients = synthetic_clients(rng)
    cal = fit_in_process(GCFCP(GROUPS, 0.1, 250), [c[0] for c in clients], [c[1] for c in clients])
    with pytest.raises(ValueError, match="features describe 1 points but score_matrix has 5 rows"):
        cal.predict(rng.random((5, 10)), [3])
    with pytest.raises(ValueError, match="features are needed"):
        cal.predict(rng.random((5, 10)))
    for delta in (40, 250, 2500):
        cons = GCFCP(GROUPS, 0.1, delta, conservative=True)
        assert cons.alpha < Fraction(1, 10) - Fraction(math.pi) / delta  # below α - π/δ, never above
        assert Fraction(1, 10) - Fraction(math.pi) / delta - cons.alpha < Fraction(1, 10**11)


def test_aggregate_counts_rejects_bad_mixture_weights():
    rng = np.random.default_rng(16)
    counts = {c: evaluation_counts(rng.random((5, 10)) < 0.5, rng.integers(0, 10, 5)) for c in ("a", "b")}
    with pytest.raises(ValueError, match="no weight for clients"):
        aggregate_counts(counts, {"a": 1.0})
    with pytest.raises(ValueError, match="finite"):
        aggregate_counts(counts, {"a": 1.0, "b": float("nan")})


def test_uniform_client_weights_equal_the_exact_fractions():
    """Uniform π: integer λ_k from lcm_k K (n_k + 1) equal the Fraction route (client_lambdas, integer_weights)."""
    from flwr_gcfcp.core.quantiles import client_lambdas, integer_weights
    from flwr_gcfcp.methods.base import _client_integer_weights

    rng = np.random.default_rng(21)
    cases = [[0], [0, 0, 3], [1000, 999, 1001], [2**40, 7]] + [rng.integers(0, 5000, rng.integers(1, 40)).tolist() for _ in range(200)]
    for ns in cases:
        _, want = integer_weights(client_lambdas(ns))
        assert _client_integer_weights(ns, None) == (want, sum(want)), ns
        assert _client_integer_weights(ns, [1] * len(ns)) == (want, sum(want)), ns
