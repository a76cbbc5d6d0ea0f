"""Byzantine-robust calibration (methods/robust.py, fit_all(byzantine_clients=M)): small synthetic problems."""

from __future__ import annotations

import math
import warnings
from itertools import combinations

import numpy as np
import pytest

from flwr_gcfcp.core.groups import parse_groups
from flwr_gcfcp.methods import client_payload, fit_all, make_calibrators
from flwr_gcfcp.methods.robust import MAX_SUBSET_FITS, check_byzantine_clients, score_distances

GROUPS = parse_groups("0-3;2-5;4-7;6-9", n_labels=10)
ALPHA = 0.1
K = 5


def _client_data(rng, n=400, shift=0.0, label_skew=None):
    """Scores, features (predicted labels) and true labels of one client."""
    if label_skew is None:
        labels = rng.integers(0, 10, n)
    else:
        labels = rng.choice(label_skew, n)
    features = np.where(rng.random(n) < 0.85, labels, rng.integers(0, 10, n))
    scores = np.clip(rng.beta(1.0, 4.0 + labels / 3, n) + shift, 0, 1)
    return scores, features, labels


def _payloads(cals, data, attacked=None):
    out = {}
    for k, (s, f, y) in enumerate(data):
        if attacked is not None and k in attacked:
            s = attacked[k](s)
        out[str(k)] = client_payload(cals, s, f, 1.0 / len(data), len(data), labels=y, probs=None, rng=k)
    return out


def _fit(methods, payloads, m=0, pi=None):
    cals = make_calibrators(methods, GROUPS, ALPHA, n_classes=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_all(cals, payloads, pi=pi, byzantine_clients=m)


def _thresholds(report):
    out = {}
    for name, cal in report.calibrators.items():
        out[name] = cal.label_thresholds.copy() if hasattr(cal, "label_thresholds") else dict(cal.thresholds)
    return out


METHODS = ["gcfcp", "fedcp", "standard", "classwise", "clustered"]


def _same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        if isinstance(a[name], dict):
            assert a[name] == b[name], name
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_m0_equals_plain_fit_all():
    rng = np.random.default_rng(0)
    data = [_client_data(rng) for _ in range(K)]
    cals = make_calibrators(METHODS, GROUPS, ALPHA, n_classes=10)
    payloads = _payloads(cals, data)
    plain = _fit(METHODS, payloads)
    robust0 = _fit(METHODS, payloads, m=0)
    assert robust0.flagged == {} and robust0.used == plain.used
    _same(_thresholds(plain), _thresholds(robust0))


def test_m1_is_the_largest_leave_one_out_fit():
    """Independent formulation: fit_all on every 4-client subset, per atom / class the largest threshold."""
    rng = np.random.default_rng(1)
    data = [_client_data(rng) for _ in range(K)]
    methods = ["gcfcp", "fedcp", "standard", "classwise", "mondrian", "condcp", "fedcp_qq"]
    cals = make_calibrators(methods, GROUPS, ALPHA, n_classes=10)
    payloads = _payloads(cals, data)
    robust = _fit(methods, payloads, m=1)
    assert robust.flagged == {} and robust.failed_methods == {}  # homogeneous clients: nobody is flagged
    subsets = [_thresholds(_fit(methods, {c: payloads[c] for c in sub})) for sub in combinations(payloads, K - 1)]
    got = _thresholds(robust)
    for name in got:
        if isinstance(got[name], dict):
            want = {key: max(s[name][key] for s in subsets) for key in got[name]}
            assert got[name] == want, name
        else:
            np.testing.assert_array_equal(got[name], np.max([s[name] for s in subsets], axis=0), err_msg=name)
        assert robust.calibrators[name].robust_info["subset_fits"] == K
    # the saved predictor carries the robust thresholds and no coreset that would re-solve atoms non-robustly
    saved = robust.calibrators["gcfcp_delta250"].predictor()
    assert saved["coreset"] is None
    assert {int(k): v for k, v in saved["thresholds"].items()} == got["gcfcp_delta250"]


@pytest.mark.parametrize("poison", ["zeros", "ones"])
def test_poisoned_client_is_flagged_and_neutralised(poison):
    rng = np.random.default_rng(2)
    data = [_client_data(rng) for _ in range(K)]
    methods = ["gcfcp", "fedcp"]
    cals = make_calibrators(methods, GROUPS, ALPHA)
    value = 0.0 if poison == "zeros" else 1.0
    payloads = _payloads(cals, data, attacked={3: lambda s: np.full(s.size, value)})
    report = _fit(methods, payloads, m=1)
    assert list(report.flagged) == ["3"]
    assert "Kolmogorov-Smirnov" in report.flagged["3"]
    assert report.used == ["0", "1", "2", "4"]
    # all M attackers flagged: the fit is the ordinary fit over the benign clients
    benign = _fit(methods, {c: p for c, p in payloads.items() if c != "3"})
    _same(_thresholds(report), _thresholds(benign))
    undefended = _thresholds(_fit(methods, payloads))
    if poison == "zeros":
        assert undefended["fedcp"][0] < _thresholds(report)["fedcp"][0]
    else:
        assert undefended["fedcp"][0] >= 1.0  # every score <= 1: full sets


def test_exact_copy_is_flagged_once():
    rng = np.random.default_rng(3)
    data = [_client_data(rng) for _ in range(K)]
    cals = make_calibrators(["gcfcp"], GROUPS, ALPHA)
    payloads = _payloads(cals, data)
    payloads["4"] = dict(payloads["1"])
    report = _fit(["gcfcp"], payloads, m=1)
    assert list(report.flagged) == ["4"] and "identical" in report.flagged["4"]


def test_label_skewed_benign_clients_are_not_flagged():
    rng = np.random.default_rng(4)
    data = [_client_data(rng, n=600, label_skew=[2 * k, 2 * k + 1]) for k in range(K)]
    methods = ["gcfcp", "fedcp", "classwise"]
    cals = make_calibrators(methods, GROUPS, ALPHA, n_classes=10)
    payloads = _payloads(cals, data)
    report = _fit(methods, payloads, m=1)
    assert report.flagged == {}
    # classwise: each class is held by one client, so the subsets without it are skipped for that class
    np.testing.assert_array_equal(
        _thresholds(report)["classwise"], _thresholds(_fit(methods, payloads))["classwise"]
    )


def _coverage(cal, rng, n_test=4000, clients=range(K)):
    covered, total = np.zeros(GROUPS.n_groups), np.zeros(GROUPS.n_groups)
    for _ in clients:
        s, f, _ = _client_data(rng, n=n_test // K)
        member = GROUPS.membership(f)
        ok = s <= cal.thresholds_for(f, n=s.size)
        covered += (member & ok[:, None]).sum(axis=0)
        total += member.sum(axis=0)
    return covered / total


def test_coverage_under_attack_stays_near_target():
    """A subtle lowering attacker (not flagged) and a gross one: the robust sets still cover the benign mixture."""
    covs_subtle, covs_gross, undefended = [], [], []
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        data = [_client_data(rng) for _ in range(K)]
        cals = make_calibrators(["gcfcp"], GROUPS, ALPHA)
        subtle = _payloads(cals, data, attacked={0: lambda s: s * 0.75})
        gross = _payloads(cals, data, attacked={0: lambda s: np.zeros(s.size)})
        rep_subtle = _fit(["gcfcp"], subtle, m=1)
        assert rep_subtle.flagged == {}  # within the tolerance: certified by the leave-one-out maximum
        rep_gross = _fit(["gcfcp"], gross, m=1)
        assert list(rep_gross.flagged) == ["0"]
        test_rng = np.random.default_rng(200 + seed)
        covs_subtle.append(_coverage(rep_subtle.calibrators["gcfcp_delta250"], test_rng))
        covs_gross.append(_coverage(rep_gross.calibrators["gcfcp_delta250"], test_rng))
        undefended.append(_coverage(_fit(["gcfcp"], gross).calibrators["gcfcp_delta250"], test_rng))
    # honest tolerance: 6 seeds x ~1000 test points per group, δ = 250 slack π/δ ≈ 0.013
    assert np.mean(covs_subtle, axis=0).min() >= 1 - ALPHA - 0.02
    assert np.mean(covs_gross, axis=0).min() >= 1 - ALPHA - 0.02
    assert np.mean(undefended, axis=0).min() < 1 - ALPHA - 0.01  # the attack bites without the defence (~0.875)


@pytest.mark.parametrize("bad", [-1, 5, 7, 1.5, True, "1"])
def test_bad_byzantine_clients_is_a_clear_error(bad):
    rng = np.random.default_rng(5)
    data = [_client_data(rng, n=50) for _ in range(K)]
    cals = make_calibrators(["fedcp"], GROUPS, ALPHA)
    payloads = _payloads(cals, data)
    with pytest.raises(ValueError, match="byzantine_clients"):
        _fit(["fedcp"], payloads, m=bad)


def test_subset_fit_limit_is_checked_up_front():
    with pytest.raises(ValueError, match="fits per method"):
        check_byzantine_clients(10, 40)
    assert math.comb(40, 2) <= MAX_SUBSET_FITS and check_byzantine_clients(2, 40) == 2


def test_too_few_valid_clients_fails_the_methods_not_the_server():
    rng = np.random.default_rng(6)
    data = [_client_data(rng, n=60) for _ in range(3)]
    cals = make_calibrators(["fedcp"], GROUPS, ALPHA)
    payloads = _payloads(cals, data)
    payloads["1"] = {"junk": np.zeros(1)}
    payloads["2"] = {"junk": np.zeros(1)}
    report = _fit(["fedcp"], payloads, m=1)
    assert set(report.excluded) == {"1", "2"}
    assert "byzantine_clients=1" in report.failed_methods["fedcp"]


def test_score_distances_account_for_sampling():
    rng = np.random.default_rng(7)
    data = [_client_data(rng, n=300) for _ in range(3)]
    cals = make_calibrators(["fedcp"], GROUPS, ALPHA)
    payloads = _payloads(cals, data, attacked={2: lambda s: np.ones(s.size)})
    cal = next(iter(cals.values()))
    from flwr_gcfcp.core.summaries import DEFAULT_LIMITS
    from flwr_gcfcp.methods.rounds import _parse_payload

    parsed = {c: {cal.name: _parse_payload(cal, p, DEFAULT_LIMITS)} for c, p in payloads.items()}
    ids, ks, excess = score_distances(cals, parsed)
    assert ids == ["0", "1", "2"]
    assert ks[0, 2] == pytest.approx(1.0) and excess[0, 2] > 0.7
    assert 0 < ks[0, 1] < 0.2 and excess[0, 1] == 0.0  # within the sampling and digest allowance


def test_attack_suite_smoke_on_synthetic_outputs():
    """simulations.attacks end to end on synthetic model outputs (no data file): tables build, the poisoned client
    is flagged, every validation-level attack is excluded by validation with its reason."""
    from simulations import attacks

    rng = np.random.default_rng(8)
    labels = rng.integers(0, 10, 6000)
    logits = rng.normal(0, 1, (6000, 10))
    logits[np.arange(6000), labels] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = ["none", "zeros", *attacks.VALIDATION_LEVEL, "identity_claim"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = attacks.run_suite(probs, labels, 1, 0, ["label-skew"], ["gcfcp"], names, ["0", "1"], progress=False)
    rows = {(r["attack"], r["byzantine_clients"]): r for r in attacks.summarize(result["records"])}
    assert rows[("zeros", 1)]["attacker_flagged"] == 1 and rows[("zeros", 0)]["attacker_flagged"] == 0
    assert rows[("none", 1)]["benign_excluded_or_flagged"] == 0
    assert rows[("zeros", 1)]["worst_group_coverage_benign"] > rows[("zeros", 0)]["worst_group_coverage_all"]
    expected = {
        "tiny_n": "n_k = 3 calibration points is below the minimum 9",
        "coarse_digest": "is not a valid δ = 250 digest",
        "impossible_atoms": "are not membership patterns the groups can produce",
        "overflow_counts": "count bit widths in 'atoms' are wider than the atoms' point counts need",
        "oversized": "a δ = 250 digest has at most min(points, floor(δ) + 2) = 252",
    }
    assert set(expected) == set(attacks.VALIDATION_LEVEL)
    for attack, reason in expected.items():
        for m in (0, 1):
            row = rows[(attack, m)]
            assert row["attacker_excluded"] == 1 and row["attacker_flagged"] == 0, (attack, m)
            [why] = row["attacker_excluded_reasons"]
            assert why.startswith("malformed payload: ") and reason in why, (attack, why)
            assert row["benign_excluded_or_flagged"] == 0 and row["fitted_splits"] == 1
    # identity: the server excludes both claimants of the partition id (the victim too) and fits on the others
    ident = rows[("identity_claim", 0)]
    assert ident["attacker_excluded"] == 1 and ident["benign_excluded_or_flagged"] == 1 and ident["fitted_splits"] == 1
    assert "duplicate identity: partition-id 1" in ident["attacker_excluded_reasons"][0]
    result["summary"] = list(rows.values())
    result["settings"] = {"splits": 1, "partitions": ["label-skew"], "methods": ["gcfcp"], "attacks": names}
    text = attacks.markdown(result, "test", ["0", "1"])
    assert "| gcfcp | zeros |" in text and "## Headline" in text and "count bit widths" in text


def test_attack_payloads_change_the_payload_and_overflow_wraps():
    """Each payload attack differs from the honest payload; the overflow payload claims the honest n (int64 wrap)."""
    from flwr_gcfcp.core.summaries import PayloadError, decode_digest_blocks
    from simulations import attacks

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 10000)
    probs = rng.dirichlet(np.ones(10), size=10000)
    groups = parse_groups(attacks.GROUPS, n_labels=10)
    split = attacks.Split(attacks._score_matrix(probs), labels, np.argmax(probs, axis=1), rng, "label-skew")
    for method in ("gcfcp", "fedcp", "classwise", "clustered"):
        cals = attacks._make(method, groups)
        honest = {}
        for k in range(attacks.N_CLIENTS):
            idx = np.flatnonzero(split.cal_client == k)
            honest[str(k)] = attacks._payload(cals, split.cal_scores[idx], split.cal_features[idx], split.cal_labels[idx], k)
        for attack in ("zeros", "copy", "inflated_n", *attacks.VALIDATION_LEVEL):
            bad = attacks.attack_payload(attack, method, groups, split, honest, 2, rng)
            assert attacks._changed(bad, honest["2"]), (method, attack)
        bad = attacks.attack_payload("overflow_counts", method, groups, split, honest, 2, rng)
        pre = attacks._digest_prefix(bad)
        atoms = np.asarray(bad[pre + "atoms"], dtype=np.int64)
        assert np.array_equal(atoms[1], np.asarray(honest["2"][pre + "atoms"], dtype=np.int64)[1])
        assert atoms[4].max() == 62  # 2**62 - 1 in 62 bits: the counts the old int64 sum wrapped
        with pytest.raises(PayloadError, match="count bit widths"):
            decode_digest_blocks({k[len(pre):]: v for k, v in bad.items() if k.startswith(pre)}, 250.0, None)
    assert not attacks._changed(honest["2"], dict(honest["2"]))


def test_clustered_subsets_count_clusters_on_present_classes():
    """A subset without a label-skewed client's classes must not read their count 0 as the rarest class."""
    from flwr_gcfcp.methods.classcond import clustering_heuristic
    from flwr_gcfcp.methods.robust import _present_class_heuristic
    from flwr_gcfcp.core.summaries import DEFAULT_LIMITS
    from flwr_gcfcp.methods.rounds import _parse_payload

    rng = np.random.default_rng(9)
    data = [_client_data(rng, n=1500, label_skew=[2 * k, 2 * k + 1]) for k in range(K)]
    cals = make_calibrators(["clustered"], GROUPS, ALPHA, n_classes=10)
    cal = cals["clustered"]
    payloads = _payloads(cals, data)
    subset = [_parse_payload(cal, payloads[c], DEFAULT_LIMITS) for c in ("0", "1", "2", "3")]
    held = np.bincount(np.concatenate([y for _, _, y in data[:4]]), minlength=10)
    assert _present_class_heuristic(subset, ALPHA) == clustering_heuristic(held[held > 0], ALPHA)[1] > 1
    assert clustering_heuristic(held, ALPHA)[1] <= 1  # the absent classes would have forced the null cluster
