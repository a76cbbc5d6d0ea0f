"""Wire encoding of client summaries (issue 12) and the server's bounded validation of them (issue 9, item 1).

* decode(encode(x)) is bit-exact: on the CIFAR-10 ResNet-56 outputs, every method's fit from the Flower payloads
  equals the fit on summaries built in memory straight from ``core.tdigest`` / the methods' own summarize (the
  pre-encoding payload content), bit for bit;
* inconsistent encodings, overflowing counts, too few points, impossible atoms, digests that are not δ-digests and
  oversized payloads exclude the client with a reason, and the remaining clients' fit equals the fit over them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from flwr_gcfcp.core.encoding import (
    EncodingError,
    decode_sorted_floats,
    encode_sorted_floats,
    float_order_keys,
    order_keys_to_floats,
    pack_uints,
    unpack_uints,
)
from flwr_gcfcp.core.groups import parse_groups, pattern_keys
from flwr_gcfcp.core.scores import make_score
from flwr_gcfcp.core.summaries import (
    DigestSummary,
    PayloadError,
    PayloadLimits,
    QQSummary,
    RawSummary,
    encode_digest_blocks,
)
from flwr_gcfcp.core.tdigest import build_digest, check_unit_structure
from flwr_gcfcp.methods import client_payload, fit_all, make_calibrators, payload_bytes
from flwr_gcfcp.methods.adapters import ClassConditionalCalibrator, SetValuedCalibrator, _wrap
from flwr_gcfcp.methods.setvalued import SetValuedClassifier

GROUPS = parse_groups("0-3;2-5;4-7;6-9", n_labels=10)
DATA = Path(os.environ.get("FLWR_GCFCP_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CIFAR10 = DATA / "logits" / "cifar10_resnet56_test_logits.npz"
METHODS = [
    "split_cp", "fedcp", "fedcp_raw", "fedcp_qq", "mondrian", "condcp", "centralized_gcfcp", "gcfcp",
    "standard", "classwise", "clustered", "clustered:gamma=0.3", "standard:conservative=true", "classwise:delta=25",
    "clustered:delta=2500", "topk:2", "pointwise", "penalized:0.2", "avg_size:2", "avg_size:2:delta=2500",
    "avg_error", "avg_error:conservative=true", "avg_error:delta=25", "fbeta", "hybrid:3:1.5",
]


# ------------------------------------------------------------------------------------------------ helpers
def _cifar_clients(n_cal=5000, seed=0):
    if not CIFAR10.is_file():
        pytest.skip(f"CIFAR-10 model outputs not found at {CIFAR10} (set FLWR_GCFCP_DATA to the shared data folder)")
    from flwr_gcfcp.app.datasets import load_model_outputs

    probs, labels = load_model_outputs(CIFAR10)
    perm = np.random.default_rng(seed).permutation(labels.size)[:n_cal]
    score = make_score("softmax")
    out = []
    for k in range(5):  # the paper's label skew: client k holds true classes 2k, 2k + 1
        idx = perm[np.isin(labels[perm], [2 * k, 2 * k + 1])]
        p, y = probs[idx], labels[idx]
        out.append((score.calibration_scores(p, y), p, y))
    return out


def _synthetic_clients(seed=0, sizes=(300, 200, 250, 150, 100)):
    rng = np.random.default_rng(seed)
    out = []
    for k, n in enumerate(sizes):
        y = rng.choice([2 * k, 2 * k + 1], size=n)
        z = rng.normal(size=(n, 10))
        z[np.arange(n), y] += 2.0
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        out.append((1 - p[np.arange(n), y], p, y))
    return out


def _payloads(cals, clients):
    return {
        f"c{k}": client_payload(cals, s, p, pi_k=1 / len(clients), n_clients=len(clients), labels=y, probs=p, rng=[0, k])
        for k, (s, p, y) in enumerate(clients)
    }


def _direct_digest_summary(scores, keys, delta):
    """The pre-encoding content of a digest payload, built with core.tdigest only."""
    uniq = np.unique(keys)
    digests = [build_digest(scores[keys == key], None, delta) for key in uniq.tolist()]
    return DigestSummary(
        n=int(scores.size), delta=float(delta), atom_keys=uniq,
        offsets=np.concatenate([[0], np.cumsum([d.n_clusters for d in digests])]).astype(np.int64),
        means=np.concatenate([d.means for d in digests]) if digests else np.zeros(0),
        counts=np.concatenate([d.weights for d in digests]).astype(np.int64) if digests else np.zeros(0, np.int64),
    )


def _reference_summary(cal, k, scores, probs, labels):
    """What ``cal`` would fit on for client k, built in memory without the wire encoding."""
    if isinstance(cal, ClassConditionalCalibrator):
        model = cal._new_model(probs.shape[1])
        out = model.summarize(scores, labels, rng=np.random.default_rng([0, k]))
        out["n"] = np.array([scores.size])
        return _wrap(out, scores.size)
    if isinstance(cal, SetValuedCalibrator):
        if cal.summary_kind == "svnone":
            return _wrap({"n": np.array([labels.size])}, labels.size)
        fw = "average_size" if cal.framework == "f_beta" else cal.framework
        helper = cal.model if fw == cal.framework else SetValuedClassifier(fw, k_bar=1.0, delta=cal.model.delta)
        return _wrap(helper.summarize(probs, labels), labels.size)
    if cal.summary_type is DigestSummary:
        return _direct_digest_summary(scores, cal.atom_keys(probs, scores.size), cal.delta)
    return cal.summarize(scores, probs)  # raw scores / FedCP-QQ order statistics (in memory)


def _fitted_values(cal):
    out = dict(cal.thresholds)
    if hasattr(cal, "predictor_arrays"):
        out.update({f"array:{k}": v for k, v in cal.predictor_arrays().items()})
    return out


def _bits_equal(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def _gcfcp_round(clients, delta=250):
    cals = make_calibrators(["gcfcp"], GROUPS, 0.1, deltas=[delta])
    return cals, _payloads(cals, clients)


# ------------------------------------------------------------------------------------------------ exactness
def test_every_method_fits_bit_identically_from_the_encoded_cifar10_payloads():
    clients = _cifar_clients()
    cals = make_calibrators(METHODS, GROUPS, 0.1, deltas=[250, 25, 2500], conservative=True)
    report = fit_all(cals, _payloads(cals, clients))
    assert not report.excluded and not report.failed_methods and len(report.used) == 5
    fresh = make_calibrators(METHODS, GROUPS, 0.1, deltas=[250, 25, 2500], conservative=True)
    assert set(fresh) == set(report.calibrators) and len(fresh) == 29
    for name, cal in fresh.items():
        reference = [_reference_summary(cal, k, s, p, y) for k, (s, p, y) in enumerate(clients)]
        cal.fit(reference, None)
        got, want = _fitted_values(report.calibrators[name]), _fitted_values(cal)
        assert got.keys() == want.keys(), name
        for key in want:
            assert _bits_equal(got[key], want[key]), (name, key, got[key], want[key])


def test_cifar10_bytes_below_raw_scores_and_a_third_of_the_float_layout():
    clients = _cifar_clients()
    cals = make_calibrators(["gcfcp", "fedcp", "centralized_gcfcp"], GROUPS, 0.1, deltas=[250, 25, 1000, 2500])
    for k, (s, p, y) in enumerate(clients):
        sizes = payload_bytes(client_payload(cals, s, p))
        raw_values = 8 * s.size  # the float64 scores alone
        for delta in (25, 250, 1000, 2500):
            digest = _direct_digest_summary(s, cals[f"gcfcp_delta{delta}"].atom_keys(p, s.size), delta)
            a, c = digest.atom_keys.size, digest.means.size
            float_layout = 8 * 3 + 8 * a + 8 * (a + 1) + 24 * c  # n, λ, δ, keys, offsets, (mean, weight, count) each
            assert sizes[f"digest{delta:g}"] == digest.nbytes
            assert sizes[f"digest{delta:g}"] < raw_values, (k, delta)
            if delta <= 250:
                assert 3 * sizes[f"digest{delta:g}"] <= float_layout, (k, delta)
        assert sizes["raw"] == 9 * s.size  # float64 scores + uint8 atom keys


def test_digest_round_trip_is_bit_exact_for_extreme_values_and_ties():
    rng = np.random.default_rng(0)
    tiny, huge = np.nextafter(0, 1), 1e307  # huge: no overflow inside the digest's cluster means
    cases = [
        rng.random(500) ** 12,
        np.repeat(rng.normal(size=20), 30),  # ties inside and across clusters
        np.concatenate([[-huge, huge, -tiny, tiny, 0.0], rng.normal(size=200) * 1e300]),
        np.full(77, 0.25),
        np.array([3.5]),
    ]
    for delta in (1.5, 25, 250, 2500):
        for values in cases:
            keys = rng.integers(0, 3, values.size) * 3  # atom keys 0, 3, 6
            d = _direct_digest_summary(values, keys, delta)
            back = DigestSummary.from_arrays(d.to_arrays(), delta)
            assert back.n == d.n and np.array_equal(back.atom_keys, d.atom_keys)
            assert np.array_equal(back.offsets, d.offsets) and np.array_equal(back.counts, d.counts)
            assert back.means.tobytes() == (d.means + 0.0).tobytes()  # -0.0 is sent as +0.0


def test_raw_and_qq_summaries_round_trip():
    rng = np.random.default_rng(1)
    s = rng.random(300)
    keys = rng.integers(1, 16, 300)
    raw = RawSummary.from_arrays(RawSummary(s, keys).to_arrays())
    assert raw.scores.tobytes() == s.tobytes() and np.array_equal(raw.atom_keys, keys)
    top = np.sort(s)[::-1][:40]
    qq = QQSummary.from_arrays(QQSummary(300, top).to_arrays())
    assert qq.n == 300 and qq.top.tobytes() == top.tobytes()
    empty = QQSummary.from_arrays(QQSummary(0, np.zeros(0)).to_arrays())
    assert empty.n == 0 and empty.top.size == 0


def test_sorted_float_code_round_trips_and_rejects_tampering():
    rng = np.random.default_rng(2)
    for _ in range(50):
        blocks = [np.sort(rng.standard_cauchy(int(rng.integers(1, 60)))) for _ in range(int(rng.integers(1, 5)))]
        first, widths, low, high = encode_sorted_floats(blocks)
        out = decode_sorted_floats([b.size for b in blocks], first, widths, low, high)
        assert out.tobytes() == np.concatenate(blocks).tobytes()
    v = np.array([-np.inf, -1.0, -0.0, 0.0, 5e-324, 1.0, np.inf])
    assert np.all(np.diff(float_order_keys(v).astype(np.float64)) >= 0)
    assert order_keys_to_floats(float_order_keys(v[1:-1])).tobytes() == (v[1:-1] + 0.0).tobytes()
    first, widths, low, high = encode_sorted_floats([np.sort(rng.random(100))])
    with pytest.raises(EncodingError, match="trailing bytes"):
        decode_sorted_floats([100], first, widths, low, np.concatenate([high, np.zeros(1, np.uint8)]))
    with pytest.raises(EncodingError, match="set bits"):
        decode_sorted_floats([101], first, widths, low, high)
    with pytest.raises(EncodingError, match="at most"):
        decode_sorted_floats([100], first, widths, low, np.full(4096, 255, np.uint8))
    swapped = low.copy()
    swapped[:7], swapped[7:14] = low[7:14], low[:7]  # the first two low parts exchanged (widths are 56 bits)
    if widths[0] == 56:
        with pytest.raises(EncodingError, match="non-decreasing"):
            decode_sorted_floats([100], first, widths, swapped, high)
    assert np.array_equal(unpack_uints(pack_uints(np.array([0, 5, 7, 1]), 3), 4, 3, "x"), [0, 5, 7, 1])
    with pytest.raises(EncodingError, match="padding"):
        unpack_uints(np.array([0b00000001], np.uint8), 2, 3, "x")


def test_structure_check_accepts_every_built_digest_and_names_the_bad_cluster():
    rng = np.random.default_rng(3)
    for delta in (1.0, 2.0, 2.5, 7.0, 25.0, 250.0, 1000.0, 2500.0, 1e7):
        for n in [1, 2, 3, 5, 17, 100, 999, 4321]:
            d = build_digest(rng.random(n), None, delta)
            assert check_unit_structure(d.weights, delta) is None, (delta, n)
    d = build_digest(rng.random(1000), None, 250)
    merged_first = np.concatenate([[d.weights[0] + d.weights[1]], d.weights[2:]])
    assert "more points than the arcsine rule allows" in check_unit_structure(merged_first, 250)
    assert "fewer points than the greedy construction takes" in check_unit_structure(np.ones(1000, np.int64), 250)


# ------------------------------------------------------------------------------------------------ exclusions
def _atoms(payload, key="digest250"):
    return payload[f"{key}/atoms"].astype(np.int64)


def _fit_without(cals, clients, drop):
    keep = [c for k, c in enumerate(clients) if k not in drop]
    fresh = make_calibrators(["gcfcp"], GROUPS, 0.1, deltas=[250])
    return fit_all(fresh, _payloads(fresh, keep))


def test_inconsistent_encodings_are_excluded_with_reasons_and_the_rest_fit_as_alone():
    clients = _synthetic_clients(4)
    cals, payloads = _gcfcp_round(clients)
    atoms = _atoms(payloads["c0"])
    atoms[1, 0] += 1  # counts do not add up to the atom's points
    payloads["c0"]["digest250/atoms"] = atoms
    atoms = _atoms(payloads["c1"])
    single = int(np.flatnonzero(atoms[4] == 0)[0])  # an atom whose clusters are all single points
    atoms[1, single] = atoms[2, single] + 1  # an all-singleton atom (no count bits) claiming more points than values
    payloads["c1"]["digest250/atoms"] = atoms
    payloads["c2"]["digest250/data"] = np.concatenate([payloads["c2"]["digest250/data"], [0]]).astype(np.uint8)
    payloads["c3"]["digest250/data"] = payloads["c3"]["digest250/data"][:20]
    report = fit_all(cals, payloads)
    assert report.used == ["c4"]
    assert "counts sum to" in report.excluded["c0"]
    assert "counts sum to" in report.excluded["c1"]
    assert "trailing bytes" in report.excluded["c2"]
    assert "fewer than the" in report.excluded["c3"]
    alone = _fit_without(cals, clients, {0, 1, 2, 3})
    assert report.calibrators["gcfcp_delta250"].thresholds == alone.calibrators["gcfcp_delta250"].thresholds


def _pack_counts(counts, width):
    bits = np.unpackbits(pack_uints(np.asarray(counts, dtype=np.uint64) - np.uint64(1), width))[: len(counts) * width]
    return np.packbits(bits)


def test_overflowing_counts_whose_int64_sum_wraps_to_n_are_excluded():
    clients = _synthetic_clients(5)
    cals, payloads = _gcfcp_round(clients)
    n = int(payloads["c0"]["digest250/atoms"][1].astype(np.int64).sum())
    # one atom holding all n points as four clusters whose counts wrap around 2**64 to n
    counts = [2**62, 2**62, 2**62, 2**62 + n]
    assert int(np.array(counts, dtype=np.uint64).sum()) == n  # the wrap-around the attack relies on
    _, _, low, high = encode_sorted_floats([np.zeros(4)])
    payloads["c0"] = {
        "digest250/atoms": np.array([[1], [n], [4], [0], [63]], dtype=np.uint64),
        "digest250/data": np.concatenate([np.zeros(8, np.uint8), _pack_counts(counts, 63), low, high]),
    }
    # per-atom point counts whose int64 sum wraps to n
    atoms = _atoms(payloads["c1"]).astype(np.uint64)
    atoms[1, 0] += np.uint64(2**63)
    atoms[1, 1] += np.uint64(2**63)
    payloads["c1"]["digest250/atoms"] = atoms
    report = fit_all(cals, payloads)
    assert set(report.excluded) == {"c0", "c1"}
    assert "wider than" in report.excluded["c0"]
    assert "2**63" in report.excluded["c1"]
    alone = _fit_without(cals, clients, {0, 1})
    assert report.calibrators["gcfcp_delta250"].thresholds == alone.calibrators["gcfcp_delta250"].thresholds


@pytest.mark.parametrize("method", ["fedcp", "gcfcp", "classwise"])
def test_clients_with_0_1_or_3_points_are_excluded_not_forcing_inf(method):
    clients = _synthetic_clients(6)
    tiny = [(s[:m], p[:m], y[:m]) for m, (s, p, y) in zip((0, 1, 3), _synthetic_clients(7))]
    cals = make_calibrators([method], GROUPS, 0.1, deltas=[250])
    payloads = _payloads(cals, clients + [tiny[0] if method != "gcfcp" else tiny[1]] + tiny[1:])
    if method == "gcfcp":  # a grouped client cannot place 0 points; an empty digest payload is still well-formed
        empty = _direct_digest_summary(np.zeros(0), np.zeros(0, np.int64), 250)
        payloads["c5"] = {f"digest250/{k}": v for k, v in empty.to_arrays().items()}
    report = fit_all(cals, payloads)
    assert sorted(report.excluded) == ["c5", "c6", "c7"] and report.used == [f"c{k}" for k in range(5)]
    for cid, m in zip(("c5", "c6", "c7"), (0, 1, 3)):
        assert f"n_k = {m} calibration points is below the minimum 9" in report.excluded[cid]
    fresh = make_calibrators([method], GROUPS, 0.1, deltas=[250])
    benign = fit_all(fresh, _payloads(fresh, clients))
    for name, cal in report.calibrators.items():
        assert cal.thresholds == benign.calibrators[name].thresholds
        assert all(np.isfinite(t) for t in cal.thresholds.values())
    lowered = fit_all(make_calibrators([method], GROUPS, 0.1, deltas=[250]), payloads, limits=PayloadLimits(min_points=2))
    assert sorted(lowered.excluded) == ["c5", "c6"]


def test_impossible_atom_keys_are_excluded():
    clients = _synthetic_clients(8)
    cals, payloads = _gcfcp_round(clients)
    possible = set(pattern_keys(GROUPS.all_patterns()).tolist())
    assert 5 not in possible  # groups 0-3 and 4-7 never overlap
    atoms = _atoms(payloads["c0"])
    keys = atoms[0].tolist()
    j = next(i for i in range(len(keys)) if (i == 0 or keys[i - 1] < 5) and (i == len(keys) - 1 or keys[i + 1] > 5))
    atoms[0, j] = 5  # relabel one atom (keys stay strictly increasing)
    payloads["c0"]["digest250/atoms"] = atoms
    atoms = _atoms(payloads["c1"])
    atoms[0, -1] = 2**10  # beyond every pattern of 4 groups
    payloads["c1"]["digest250/atoms"] = atoms
    report = fit_all(cals, payloads)
    assert "[5] are not membership patterns the groups can produce" in report.excluded["c0"]
    assert "not membership patterns the groups can produce" in report.excluded["c1"]


def test_big_endian_keys_cannot_wrap_to_negative_atoms():
    """A big-endian uint64 key 2**64 - 1 would read as -1 after a cast and drop a class's points unexcluded."""
    clients = _synthetic_clients(12)
    cals = make_calibrators(["classwise"], GROUPS, 0.1)
    payloads = _payloads(cals, clients)
    atoms = payloads["c0"]["ccclass250/atoms"].astype(">u8")
    atoms[0, 0] = 2**64 - 1
    payloads["c0"]["ccclass250/atoms"] = atoms
    native = payloads["c1"]["ccclass250/atoms"].astype(np.int64)
    native[0, 0] = -1
    payloads["c1"]["ccclass250/atoms"] = native
    report = fit_all(cals, payloads)
    assert "native byte order" in report.excluded["c0"]
    assert "keys must be >= 0" in report.excluded["c1"] or "integers >= 0" in report.excluded["c1"]


def test_coarse_digest_claiming_delta_250_is_excluded():
    clients = _synthetic_clients(9, sizes=(300, 600, 300, 300))  # a δ = 250 digest keeps atoms below ~160 points whole
    cals, payloads = _gcfcp_round(clients)
    s, p, _ = clients[0]
    keys = cals["gcfcp_delta250"].atom_keys(p, s.size)
    coarse = _direct_digest_summary(s, keys, 1.0)  # one cluster per atom
    payloads["c0"] = {f"digest250/{k}": v for k, v in coarse.to_arrays().items()}
    s, p, _ = clients[1]
    fine = _direct_digest_summary(s, cals["gcfcp_delta250"].atom_keys(p, s.size), 300)  # a finer digest
    payloads["c1"] = {f"digest250/{k}": v for k, v in fine.to_arrays().items()}
    finest = _direct_digest_summary(s, cals["gcfcp_delta250"].atom_keys(p, s.size), 1e6)  # every point a cluster
    payloads["c2"] = {f"digest250/{k}": v for k, v in finest.to_arrays().items()}
    report = fit_all(cals, payloads)
    assert "not a valid δ = 250 digest" in report.excluded["c0"] and "more points than the arcsine rule" in report.excluded["c0"]
    assert "not a valid δ = 250 digest" in report.excluded["c1"] and "fewer points" in report.excluded["c1"]
    assert "a δ = 250 digest has at most min(points, floor(δ) + 2) = 252" in report.excluded["c2"]
    alone = _fit_without(cals, clients, {0, 1, 2})
    assert report.calibrators["gcfcp_delta250"].thresholds == alone.calibrators["gcfcp_delta250"].thresholds


def test_oversized_payloads_and_fits_are_bounded():
    clients = _synthetic_clients(10, sizes=(300, 300, 300))
    cals = make_calibrators(["gcfcp", "condcp"], GROUPS, 0.1, deltas=[2500])
    payloads = _payloads(cals, clients)
    report = fit_all(cals, payloads, limits=PayloadLimits(max_client_values=400))
    assert set(report.excluded) == {"c0", "c1", "c2"}
    assert "PayloadLimits.max_client_values = 400" in report.excluded["c0"]
    report = fit_all(cals, payloads, limits=PayloadLimits(max_client_bytes=1000))
    assert "PayloadLimits.max_client_bytes = 1000" in report.excluded["c0"]
    report = fit_all(cals, payloads, limits=PayloadLimits(max_fit_values=700))
    assert not report.excluded and set(report.failed_methods) == {"gcfcp_delta2500", "condcp"}
    assert "PayloadLimits.max_fit_values = 700" in report.failed_methods["condcp"]
    # a well-formed digest that claims more clusters than a δ-digest can have is refused before it is unpacked
    atoms = _atoms(payloads["c0"], "digest2500")
    atoms[2, 0] = 10**6
    payloads["c0"]["digest2500/atoms"] = atoms
    report = fit_all(make_calibrators(["gcfcp"], GROUPS, 0.1, deltas=[2500]), payloads)
    assert "at most min(points, floor(δ) + 2)" in report.excluded["c0"]


def test_class_conditional_and_set_valued_blocks_are_validated_like_digests():
    clients = _synthetic_clients(11)
    cals = make_calibrators(["classwise", "avg_size:2", "pointwise"], GROUPS, 0.1)
    payloads = _payloads(cals, clients)
    coarse = build_digest(np.arange(50.0), None, 1.0)
    bad = encode_digest_blocks([0], [coarse.means], [coarse.weights], "ccclass250/")
    payloads["c0"].update(bad)
    atoms = payloads["c1"]["svprobs250/atoms"].astype(np.int64)
    atoms[0, 0] = 1  # a set-valued digest has the one atom 0
    payloads["c1"]["svprobs250/atoms"] = atoms
    nll = payloads["c2"]["svnll/nll"].astype(np.uint64)
    nll[0] = np.uint64(2**63 + 5)
    payloads["c2"]["svnll/nll"] = nll
    report = fit_all(cals, payloads)
    assert set(report.excluded) == {"c0", "c1", "c2"}
    assert "not a valid δ = 250 digest" in report.excluded["c0"] or "counts sum to" in report.excluded["c0"]
    assert "[0, 1)" in report.excluded["c1"]
    assert "nll" in report.excluded["c2"]


def test_payload_limits_are_validated():
    with pytest.raises(ValueError, match="max_points"):
        PayloadLimits(max_points=0)
    with pytest.raises(ValueError, match="min_points"):
        PayloadLimits(min_points=-1)
    with pytest.raises(ValueError, match="2\\*\\*62"):
        PayloadLimits(max_points=2**40, max_client_values=2**30)
    assert PayloadLimits().points_floor(0.1) == 9 and PayloadLimits().points_floor(0.05) == 19
    assert PayloadLimits(min_points=3).points_floor(0.1) == 3
    with pytest.raises(ValueError, match="PayloadLimits"):
        fit_all({}, {}, limits={"max_points": 5})
    with pytest.raises(PayloadError, match="missing field 'atoms'"):
        DigestSummary.from_arrays({"data": np.zeros(0, np.uint8)}, 250)
