"""Tamper-evident saved predictors: seal (SHA-256, optional HMAC), schema, value ranges and consistency checks.

The seal is recomputed here independently from the documented scheme (docs/security.md), so tampering that also
re-hashes the file exercises the schema and consistency checks behind the hash.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json

import numpy as np
import pytest

from flwr_gcfcp.core.groups import parse_groups
from flwr_gcfcp.core.predictor import Predictor, PredictorIntegrityError
from flwr_gcfcp.core.scores import make_score
from flwr_gcfcp.methods import ArraysPredictor, client_payload, fit_all, fit_in_process, make_calibrators
from flwr_gcfcp.methods.group import GCFCP, CondCP, MondrianCP
from flwr_gcfcp.methods.marginal import FedCP, SplitCP

L = 10
GROUPS = parse_groups("0-3;2-5;4-7;6-9", n_labels=L)
KEY = b"a shared secret of the deployment"


def reseal(data: dict, key: bytes | None = None) -> dict:
    """The documented seal: SHA-256 (and HMAC-SHA256) of the canonical JSON of everything but 'integrity'."""
    content = {k: v for k, v in data.items() if k != "integrity"}
    body = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    data["integrity"] = {"sha256": hashlib.sha256(body).hexdigest()}
    if key is not None:
        data["integrity"]["hmac_sha256"] = hmac.new(key, body, hashlib.sha256).hexdigest()
    return data


def _clients(seed=0, sizes=(300, 200, 250, 150, 100)):
    rng = np.random.default_rng(seed)
    out = []
    for k, n in enumerate(sizes):
        true = rng.choice([2 * k % L, (2 * k + 1) % L], size=n)
        pred = np.where(rng.random(n) < 0.8, true, rng.integers(0, L, n))
        scores = rng.beta(1 + 0.3 * k, 6, n) + 0.5 * (pred != true) * rng.random(n)
        out.append((scores, pred))
    return out


@pytest.fixture(scope="module")
def fitted():
    clients = _clients()
    cals = {}
    for cal in (GCFCP(GROUPS, 0.1, 250), CondCP(GROUPS, 0.1), MondrianCP(GROUPS, 0.1), SplitCP(0.1), FedCP(0.1, 250)):
        cals[cal.name] = fit_in_process(cal, [c[0] for c in clients], [c[1] for c in clients])
    return cals


@pytest.fixture(scope="module")
def fitted_arrays():
    rng = np.random.default_rng(3)
    clients = []
    for n in (300, 200, 250, 150):
        y = rng.integers(0, L, n)
        z = rng.normal(size=(n, L))
        z[np.arange(n), y] += 1.5
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        clients.append((p, y))
    cals = make_calibrators(["classwise", "hybrid:3:1.5", "pointwise:0.1"], GROUPS, 0.1)
    sc = make_score("softmax")
    payloads = {
        f"c{k}": client_payload(cals, sc.calibration_scores(p, y), p, pi_k=0.25, n_clients=4, labels=y, probs=p,
                                rng=[0, k])
        for k, (p, y) in enumerate(clients)
    }
    return fit_all(cals, payloads).calibrators


def _test_inputs(seed=5, n=400):
    rng = np.random.default_rng(seed)
    return rng.random((n, L)) * 1.2, rng.integers(0, L, n)


# ------------------------------------------------------------------------------------------------ valid files
@pytest.mark.parametrize("key", [None, KEY, "a text key"])
def test_valid_predictor_round_trips_and_predicts_identically(fitted, tmp_path, key):
    scores, preds = _test_inputs()
    for name, cal in fitted.items():
        path = Predictor.from_calibrator(cal).save(tmp_path / f"{name}.json", key=key)
        data = json.loads(path.read_text())
        raw_key = key.encode() if isinstance(key, str) else key
        assert data == reseal(copy.deepcopy(data), raw_key)  # the documented scheme, computed independently
        loaded = Predictor.load(path, key=key)
        assert np.array_equal(loaded.predict(scores, preds), cal.predict(scores, preds)), name
        assert loaded.method == name and loaded.private == cal.private
        assert loaded.score_lower_bound == 0.0
    # the dict the Flower strategy writes (cal.predictor()) is sealed too
    data = fitted["gcfcp_delta250"].predictor()
    assert Predictor.from_dict(json.loads(json.dumps(data))).thresholds == fitted["gcfcp_delta250"].thresholds


def test_signed_file_loads_without_key_after_its_sha256_check(fitted, tmp_path):
    path = Predictor.from_calibrator(fitted["condcp"]).save(tmp_path / "p.json", key=KEY)
    assert Predictor.load(path).thresholds == fitted["condcp"].thresholds


def test_marginal_predictor_predicts_without_features_and_group_predictor_names_features(fitted, tmp_path):
    scores, preds = _test_inputs()
    marginal = Predictor.load(Predictor.from_calibrator(fitted["fedcp"]).save(tmp_path / "m.json"))
    assert np.array_equal(marginal.predict(scores), fitted["fedcp"].predict(scores))
    assert np.array_equal(marginal.predict(scores), scores <= fitted["fedcp"].thresholds[0])
    group = Predictor.load(Predictor.from_calibrator(fitted["gcfcp_delta250"]).save(tmp_path / "g.json"))
    with pytest.raises(ValueError, match="features"):
        group.predict(scores)
    with pytest.raises(ValueError, match="features describe 3 points but score_matrix has 400 rows"):
        group.predict(scores, preds[:3])


# ------------------------------------------------------------------------------------------------ tampering
def _saved(fitted, tmp_path, name="gcfcp_delta250", key=None) -> tuple[dict, object]:
    path = Predictor.from_calibrator(fitted[name]).save(tmp_path / f"{name}.json", key=key)
    return json.loads(path.read_text()), path


def _load_edited(path, data, rehash=True, key=None):
    path.write_text(json.dumps(reseal(copy.deepcopy(data), key) if rehash else data))
    return Predictor.load(path, key=key)


@pytest.mark.parametrize(
    "value, match",
    [("nan", "finite number or 'inf'"), ("-inf", "finite number or 'inf'"), (-5, "below the score lower bound"),
     ("0.5", "finite number or 'inf'"), (True, "must be a number"), (None, "must be a number")],
)
@pytest.mark.parametrize("name", ["gcfcp_delta250", "mondrian", "fedcp"])
def test_bad_threshold_values_are_refused_even_with_a_recomputed_hash(fitted, tmp_path, name, value, match):
    data, path = _saved(fitted, tmp_path, name)
    first = next(iter(data["thresholds"]))
    data["thresholds"][first] = value
    with pytest.raises(PredictorIntegrityError, match=match):
        _load_edited(path, data)
    with pytest.raises(PredictorIntegrityError, match="SHA-256 mismatch"):
        _load_edited(path, data, rehash=False)


def test_numbers_too_large_for_a_float_are_integrity_errors(fitted, tmp_path):
    data, path = _saved(fitted, tmp_path, "fedcp")
    data["thresholds"]["0"] = 10**400
    with pytest.raises(PredictorIntegrityError, match="too large for a float"):
        _load_edited(path, data)
    path.write_text(json.dumps(data).replace(str(10**400), "7" * 5000))  # past Python's integer-digit limit
    with pytest.raises(PredictorIntegrityError, match="not valid JSON"):
        Predictor.load(path)
    data, path = _saved(fitted, tmp_path, "gcfcp_delta250")
    data["coreset"]["values"][0] = 10**400
    with pytest.raises(PredictorIntegrityError, match="out of range|too large"):
        _load_edited(path, data)


def test_nan_literal_and_invalid_json_are_refused(fitted, tmp_path):
    data, path = _saved(fitted, tmp_path, "fedcp")
    text = json.dumps(data).replace(json.dumps(data["thresholds"]["0"]), "NaN", 1)
    path.write_text(text)
    with pytest.raises(PredictorIntegrityError, match="JSON literal NaN"):
        Predictor.load(path)
    path.write_text(json.dumps(data)[:-5])
    with pytest.raises(PredictorIntegrityError, match="not valid JSON"):
        Predictor.load(path)
    path.write_text(json.dumps(data)[:-1] + ', "method": "x"}')
    with pytest.raises(PredictorIntegrityError, match="duplicate JSON key 'method'"):
        Predictor.load(path)


def test_flipped_byte_in_content_fails_the_hash(fitted, tmp_path):
    data, path = _saved(fitted, tmp_path)
    raw = bytearray(path.read_bytes())
    text = raw.decode()
    # change one digit inside the first threshold (still valid JSON, still a plausible value)
    first_value = json.dumps(data["thresholds"][next(iter(data["thresholds"]))])
    pos = text.index(first_value) + len(first_value) - 2
    raw[pos] = ord("1") if raw[pos] != ord("1") else ord("2")
    path.write_bytes(bytes(raw))
    with pytest.raises(PredictorIntegrityError, match="SHA-256 mismatch"):
        Predictor.load(path)


def test_threshold_that_disagrees_with_the_coreset_is_refused(fitted, tmp_path):
    data, path = _saved(fitted, tmp_path)
    first = next(iter(data["thresholds"]))
    data["thresholds"][first] = data["thresholds"][first] * 0.5
    with pytest.raises(PredictorIntegrityError, match="differs from .* the threshold the saved coreset gives"):
        _load_edited(path, data)


@pytest.mark.parametrize(
    "text, match",
    [("0-4;2-5;4-7;6-9", "differ from the patterns the groups"),  # same stored keys, label 4 moves to a new atom
     ("2-5;0-3;4-7;6-9", "not a membership pattern"),
     ("0-3;2-5;4-7;6-8,9", "canonical form"),
     ("0-3;2-5;4-7;6-12", "groups.text")],
)
def test_changed_group_text_is_refused(fitted, tmp_path, text, match):
    data, path = _saved(fitted, tmp_path)
    data["groups"]["text"] = text
    with pytest.raises(PredictorIntegrityError, match=match):
        _load_edited(path, data)
    with pytest.raises(PredictorIntegrityError, match="SHA-256 mismatch"):
        _load_edited(path, data, rehash=False)


def test_groups_null_never_turns_a_group_predictor_marginal(fitted, tmp_path):
    data, path = _saved(fitted, tmp_path)
    data["groups"] = None
    with pytest.raises(PredictorIntegrityError, match="needs the group definition"):
        _load_edited(path, data)
    data["kind"] = "marginal"
    with pytest.raises(PredictorIntegrityError, match="'gcfcp_delta250' is a group method"):
        _load_edited(path, data)
    data["method"] = "renamed"  # an unknown name: the atom keys and coreset still give it away
    with pytest.raises(PredictorIntegrityError, match="single atom key 0"):
        _load_edited(path, data)
    data["thresholds"] = {"0": 0.5}
    with pytest.raises(PredictorIntegrityError, match="marginal predictor has no coreset"):
        _load_edited(path, data)
    mondrian, mpath = _saved(fitted, tmp_path, "mondrian")  # no coreset
    mondrian["groups"], mondrian["kind"] = None, "marginal"
    with pytest.raises(PredictorIntegrityError, match="'mondrian' is a group method"):
        _load_edited(mpath, mondrian)


@pytest.mark.parametrize("missing", ["alpha", "thresholds", "groups", "method", "kind", "coreset", "integrity"])
def test_missing_keys_are_named(fitted, tmp_path, missing):
    data, path = _saved(fitted, tmp_path)
    del data[missing]
    path.write_text(json.dumps(data))  # not re-hashed: the missing key is named before the hash is checked
    with pytest.raises(PredictorIntegrityError, match=f"missing key '{missing}'"):
        Predictor.load(path)


def test_coreset_entries_are_checked(fitted, tmp_path):
    cases = [
        (lambda cs: cs["keys"].__setitem__(0, 5), "not a membership pattern"),  # 0b101 cannot occur
        (lambda cs: cs["weights"].__setitem__(0, "-3"), "positive integer"),
        (lambda cs: cs["values"].__setitem__(0, -1.0), "below the score lower bound"),
        (lambda cs: cs["values"].pop(), "differ in length"),
        (lambda cs: cs.__setitem__("alpha", "3/2"), "coreset.alpha"),
        (lambda cs: cs.pop("test_weight"), "missing key 'test_weight'"),
    ]
    for edit, match in cases:
        data, path = _saved(fitted, tmp_path)
        edit(data["coreset"])
        with pytest.raises(PredictorIntegrityError, match=match):
            _load_edited(path, data)


def test_other_fields_are_checked(fitted, tmp_path):
    cases = [
        ("alpha", "one tenth", "exact fraction"), ("alpha", 0.1, "exact fraction"), ("alpha", "0", "alpha"),
        ("private", "yes", "true or false"),
        ("kind", "other", "'marginal' or 'group'"), ("score_lower_bound", "nan", "finite number or null"),
        ("method", "", "non-empty string"),
    ]
    for field, value, match in cases:
        data, path = _saved(fitted, tmp_path)
        data[field] = value
        with pytest.raises(PredictorIntegrityError, match=match):
            _load_edited(path, data)
    data, path = _saved(fitted, tmp_path)
    data["extra"] = 1
    with pytest.raises(PredictorIntegrityError, match="unknown key"):
        _load_edited(path, data)


def test_hmac_wrong_key_missing_hmac_and_replaced_content(fitted, tmp_path):
    data, path = _saved(fitted, tmp_path, key=KEY)
    with pytest.raises(PredictorIntegrityError, match="HMAC mismatch"):
        Predictor.load(path, key=b"another key")
    # without the key, stripping the HMAC (and re-hashing) is detected by a loader that passes the key
    path.write_text(json.dumps(reseal(copy.deepcopy(data))))
    with pytest.raises(PredictorIntegrityError, match="carries no HMAC"):
        Predictor.load(path, key=KEY)
    # ... and so is an edit re-hashed under the old HMAC
    mondrian, mpath = _saved(fitted, tmp_path, "mondrian", key=KEY)
    mac = mondrian["integrity"]["hmac_sha256"]
    mondrian["thresholds"][next(iter(mondrian["thresholds"]))] = 0.99
    reseal(mondrian)
    mondrian["integrity"]["hmac_sha256"] = mac
    mpath.write_text(json.dumps(mondrian))
    with pytest.raises(PredictorIntegrityError, match="HMAC mismatch"):
        Predictor.load(mpath, key=KEY)
    with pytest.raises(ValueError, match="key must be non-empty"):
        Predictor.from_calibrator(fitted["mondrian"]).save(tmp_path / "x.json", key=b"")


def test_old_unsealed_format_is_refused_with_a_clear_message(fitted, tmp_path):
    data, path = _saved(fitted, tmp_path, "fedcp")
    data["format"] = "flwr-gcfcp-predictor/1"
    path.write_text(json.dumps(data))
    with pytest.raises(PredictorIntegrityError, match="no integrity hash"):
        Predictor.load(path)


# ------------------------------------------------------------------------------------------------ arrays predictors
def test_arrays_predictor_round_trips_with_and_without_key(fitted_arrays, tmp_path):
    rng = np.random.default_rng(9)
    z = rng.normal(size=(200, L))
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    sm = make_score("softmax").score_matrix(probs)
    for name, cal in fitted_arrays.items():
        for key in (None, KEY):
            path = ArraysPredictor.from_calibrator(cal).save(tmp_path / f"{name}.json", key=key)
            data = json.loads(path.read_text())
            assert data == reseal(copy.deepcopy(data), key)
            loaded = ArraysPredictor.load(path, key=key)
            np.testing.assert_array_equal(loaded.predict(sm, probs=probs), cal.predict(sm, None, probs=probs))
        path.write_text(json.dumps(cal.predictor()))  # what the Flower app writes
        assert ArraysPredictor.load(path).method == name


@pytest.mark.parametrize(
    "value, match",
    [("nan", "finite number or 'inf'"), ("-inf", "finite number or 'inf'"), (-5, "below the score lower bound")],
)
def test_arrays_predictor_bad_label_thresholds(fitted_arrays, tmp_path, value, match):
    data = ArraysPredictor.from_calibrator(fitted_arrays["classwise"]).to_dict()
    data["arrays"]["label_thresholds"][0] = value
    data["thresholds"]["0"] = value
    path = tmp_path / "p.json"
    with pytest.raises(PredictorIntegrityError, match=match):
        _load_arrays(path, data)
    with pytest.raises(PredictorIntegrityError, match="SHA-256 mismatch"):
        _load_arrays(path, data, rehash=False)


def _load_arrays(path, data, rehash=True, key=None):
    path.write_text(json.dumps(reseal(copy.deepcopy(data), key) if rehash else data))
    return ArraysPredictor.load(path, key=key)


def test_arrays_predictor_schema_and_consistency(fitted_arrays, tmp_path):
    path = tmp_path / "p.json"
    cases = [
        ("classwise", lambda d: d["thresholds"].__setitem__("1", 0.123), "disagrees with the predictor arrays"),
        ("classwise", lambda d: d["dtypes"].__setitem__("rule", "float64"), "dtypes.rule"),
        ("classwise", lambda d: d["arrays"].__setitem__("rule", [0]), "per-atom predictors"),
        ("classwise", lambda d: d["arrays"].pop("label_thresholds"), "missing key 'label_thresholds'"),
        ("classwise", lambda d: d.__setitem__("alpha", "2"), "alpha"),
        ("hybrid_3_1.5", lambda d: d["arrays"].__setitem__("framework", [99]), "framework index 99"),
        ("hybrid_3_1.5", lambda d: d["arrays"].__setitem__("temperature", [-1.0]), "temperature"),
        ("hybrid_3_1.5", lambda d: d["arrays"].__setitem__("params", [0.1]), "must have 4 entries"),
        ("hybrid_3_1.5", lambda d: d["arrays"].__setitem__("k", [1.5]), "int64 integer"),
    ]
    names = {name for name, _, _ in cases}
    assert names <= set(fitted_arrays), sorted(fitted_arrays)
    for name, edit, match in cases:
        data = ArraysPredictor.from_calibrator(fitted_arrays[name]).to_dict()
        edit(data)
        with pytest.raises(PredictorIntegrityError, match=match):
            _load_arrays(path, data)


def test_arrays_predictor_integrity(fitted_arrays, tmp_path):
    path = tmp_path / "p.json"
    data = ArraysPredictor.from_calibrator(fitted_arrays["classwise"]).to_dict(key=KEY)
    path.write_text(json.dumps(data))
    with pytest.raises(PredictorIntegrityError, match="HMAC mismatch"):
        ArraysPredictor.load(path, key=b"wrong")
    edited = copy.deepcopy(data)
    edited["arrays"]["label_thresholds"][0] = edited["arrays"]["label_thresholds"][0] + 0.01
    with pytest.raises(PredictorIntegrityError, match="SHA-256 mismatch"):
        _load_arrays(path, edited, rehash=False)
    edited["format"] = "flwr-gcfcp-arrays-predictor/1"
    with pytest.raises(PredictorIntegrityError, match="no integrity hash"):
        _load_arrays(path, edited, rehash=False)
    del edited["integrity"]
    edited["format"] = data["format"]
    with pytest.raises(PredictorIntegrityError, match="missing key 'integrity'"):
        _load_arrays(path, edited, rehash=False)
    path.write_text(json.dumps(data))
    assert ArraysPredictor.load(path, key=KEY).thresholds == fitted_arrays["classwise"].thresholds
