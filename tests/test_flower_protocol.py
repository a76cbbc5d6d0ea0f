"""The public Flower API on a numpy-only user app (no torch): register_conformal_handlers + run_conformal_rounds.

Checks the thresholds against the core's fit on the same data, the versioned protocol, bad model outputs, identity
binding of mixture weights, exact validation of evaluation counts, and that thresholds and predictors survive a
failing evaluation round.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from scipy.special import softmax

from flwr_gcfcp import make_score, parse_groups
from flwr_gcfcp.flower import (
    PROTOCOL_VERSION,
    CalibrationError,
    ConformalRounds,
    ModelOutputs,
    register_conformal_handlers,
    run_conformal_rounds,
)
from flwr_gcfcp.flower.inprocess import InProcessGrid, set_task_identity
from flwr_gcfcp.flower.protocol import (
    CALIBRATE_MESSAGE_TYPE,
    CONFIG_KEY,
    COUNTS_KEY,
    EVALUATE_MESSAGE_TYPE,
    META_KEY,
    ProtocolError,
    RoundConfig,
    validate_counts,
)
from flwr_gcfcp.methods import client_payload, fit_all, make_calibrators

GROUPS = "0-3;2-5;4-7;6-9"
N_NODES = 5


def local_data(pid: int, split: str, n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """Node ``pid`` holds labels {2 pid, 2 pid + 1}; a fixed noisy 'model' gives its probabilities."""
    rng = np.random.default_rng([pid, 0 if split == "calibration" else 1])
    labels = rng.integers(2 * pid, 2 * pid + 2, size=n)
    logits = rng.normal(size=(n, 10))
    logits[np.arange(n), labels] += rng.uniform(0.0, 4.0, size=n)
    return softmax(logits, axis=1), labels


def model_outputs(arrays: ArrayRecord, context: Context, split: str):
    return local_data(int(context.node_config["partition-id"]), split)


def user_app(outputs=model_outputs) -> ClientApp:
    app = ClientApp()
    register_conformal_handlers(app, outputs)
    return app


def rounds(tmp_path=None, **kw) -> dict:
    base = dict(alpha=0.1, groups=GROUPS, methods="gcfcp,fedcp", deltas="250", timeout=5, min_clients=2)
    if tmp_path is not None:
        base["results_dir"] = str(tmp_path / "res")
    base.update(kw)
    return base


def core_fit(pids, weights=None) -> dict:
    groups = parse_groups(GROUPS)
    cals = lambda: make_calibrators(["gcfcp", "fedcp"], groups, 0.1, [250.0])  # noqa: E731
    payloads = {}
    for p in pids:
        probs, labels = local_data(p, "calibration")
        scores = make_score("softmax").calibration_scores(probs, labels)
        payloads[str(p)] = client_payload(cals(), scores, probs, pi_k=1 / len(pids), n_clients=len(pids))
    pi = {str(p): (1.0 if weights is None else weights[p]) for p in pids}
    report = fit_all(cals(), payloads, pi=pi)
    assert not report.excluded
    return {name: cal.thresholds for name, cal in report.calibrators.items()}


def test_thresholds_equal_core_fit_and_results_are_written(tmp_path):
    grid = InProcessGrid(user_app(), N_NODES)
    report = run_conformal_rounds(grid, ArrayRecord(), **rounds(tmp_path))
    assert report.status == "evaluated" and not report.excluded and not report.evaluation_excluded
    want = core_fit(range(N_NODES))
    assert {name: report.thresholds(name) for name in want} == want
    data = json.loads((tmp_path / "res" / "results.json").read_text())
    assert set(data["methods"]) == {"gcfcp_delta250", "fedcp"} and data["protocol_version"] == PROTOCOL_VERSION
    for m in data["methods"].values():
        assert len(m["group_coverage"]) == 4 and 0.5 < m["marginal_coverage"] <= 1
    # every message of both rounds carries the protocol version
    for msg in grid.sent:
        assert msg.content.config_records[CONFIG_KEY]["protocol-version"] == PROTOCOL_VERSION


def test_steps_run_without_a_grid():
    """configure -> the ClientApp called directly -> aggregate, as a custom loop or a test would."""
    set_task_identity()
    app = user_app()
    steps = ConformalRounds(**rounds())
    nodes = [11, 12, 13]
    contexts = {
        nid: Context(run_id=1, node_id=nid, node_config={"partition-id": i}, state=RecordDict(), run_config={})
        for i, nid in enumerate(nodes)
    }

    def answer(messages):
        for i, m in enumerate(messages):
            m.metadata.__dict__["_message_id"] = f"m{m.metadata.dst_node_id}-{i}-{m.metadata.message_type}"
        return [app(m, contexts[int(m.metadata.dst_node_id)]) for m in messages]

    sent = steps.configure_calibration(ArrayRecord(), nodes)
    assert [m.metadata.message_type for m in sent] == [CALIBRATE_MESSAGE_TYPE] * 3
    outcome = steps.aggregate_calibration(sent, answer(sent))
    assert outcome.used == ["11", "12", "13"] and outcome.partition_of == {"11": 0, "12": 1, "13": 2}
    assert {n: c.thresholds for n, c in outcome.calibrators.items()} == core_fit(range(3))
    sent = steps.configure_evaluation(ArrayRecord(), outcome, nodes)
    assert sent[0].metadata.message_type == EVALUATE_MESSAGE_TYPE
    results, excluded = steps.aggregate_evaluation(outcome, sent, answer(sent))
    assert not excluded and set(results) == {"gcfcp_delta250", "fedcp"}
    assert results["fedcp"]["n"] == 3 * 120


# ------------------------------------------------------------------------------------------ protocol versions
def test_client_refuses_another_protocol_version():
    set_task_identity()
    rc = ConformalRounds(**rounds()).round_config("calibration", 2)
    record = rc.to_record()
    record["protocol-version"] = PROTOCOL_VERSION + 1
    msg = Message(RecordDict({CONFIG_KEY: record}), dst_node_id=7, message_type=CALIBRATE_MESSAGE_TYPE)
    msg.metadata.__dict__["_message_id"] = "x"
    ctx = Context(run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    reply = user_app()(msg, ctx)
    assert reply.has_error() and reply.error.code == 2
    assert f"protocol {PROTOCOL_VERSION + 1}" in reply.error.reason and f"speaks {PROTOCOL_VERSION}" in reply.error.reason
    with pytest.raises(ProtocolError, match="no 'protocol-version'"):
        RoundConfig.from_record({})


def _set_meta(key, value, message_type=CALIBRATE_MESSAGE_TYPE):
    def fault(reply: Message) -> Message:
        reply.content.config_records[META_KEY][key] = value
        return reply

    return {message_type: fault}


def test_server_excludes_a_reply_of_another_version(tmp_path):
    grid = InProcessGrid(user_app(), N_NODES, faults={2: _set_meta("protocol-version", 99)})
    report = run_conformal_rounds(grid, **rounds(tmp_path))
    [e] = report.excluded
    assert e["node_id"] == grid.node_ids[2] and "protocol 99" in e["reason"] and f"speaks {PROTOCOL_VERSION}" in e["reason"]
    assert {n: report.thresholds(n) for n in ("gcfcp_delta250", "fedcp")} == core_fit([0, 1, 3, 4])


# ------------------------------------------------------------------------------------------ bad model outputs
def _bad(kind: str):
    def outputs(arrays, context, split):
        probs, labels = local_data(int(context.node_config["partition-id"]), split)
        if int(context.node_config["partition-id"]) != 1:
            return probs, labels
        if kind == "nan":
            probs[3, 2] = np.nan
        elif kind == "not-probabilities":
            probs = probs * 2
        elif kind == "labels-out-of-range":
            labels = labels + 20
        elif kind == "wrong-shape":
            labels = labels[:-1]
        elif kind == "columns":
            probs = softmax(np.zeros((len(labels), 7)), axis=1)
        elif kind == "type":
            return probs
        return probs, labels

    return outputs


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("nan", "probs must be finite"),
        ("not-probabilities", "probs must lie in [0, 1]"),
        ("labels-out-of-range", "labels must lie in [0, 10)"),
        ("wrong-shape", "probs has 120 rows but labels has 119"),
        ("columns", "probs has 7 columns, which the server's groups do not fit"),
        ("type", "must return (probs, labels) or a ModelOutputs"),
    ],
)
def test_bad_model_outputs_are_excluded_with_the_reason(kind, reason, tmp_path):
    grid = InProcessGrid(user_app(_bad(kind)), N_NODES)
    report = run_conformal_rounds(grid, **rounds(tmp_path))
    if kind == "columns":  # with L fixed by the server the node is told so
        fixed = run_conformal_rounds(InProcessGrid(user_app(_bad(kind)), N_NODES), **rounds(n_classes=10))
        assert "probs has 7 columns but the server calibrates 10 classes" in fixed.excluded[0]["reason"]
    [e] = report.excluded
    assert e["node_id"] == grid.node_ids[1] and e["phase"] == "calibration"
    assert "error code 2" in e["reason"] and reason in e["reason"], e["reason"]
    # the same node is refused in evaluation too, with the same reason; the others are used
    [ev] = report.evaluation_excluded
    assert ev["node_id"] == grid.node_ids[1] and reason in ev["reason"]
    assert report.thresholds("fedcp") == core_fit([0, 2, 3, 4])["fedcp"]
    assert reason in (tmp_path / "res" / "results.md").read_text()


def test_regression_and_covariate_groups_through_model_outputs(tmp_path):
    def outputs(arrays, context, split):
        rng = np.random.default_rng([int(context.node_config["partition-id"]), split == "test"])
        x = rng.uniform(0, 4, size=200)
        y = 2 * x + rng.normal(size=200) * (1 + x)
        return ModelOutputs(predictions=2 * x, targets=y, covariate=x)

    report = run_conformal_rounds(
        InProcessGrid(user_app(outputs), 3), groups="interval:0-2;1-3;2-4", methods="gcfcp,split_cp", score="residual",
        timeout=5, results_dir=str(tmp_path / "res"),
    )
    assert not report.excluded and report.results["set_size_label"] == "interval length"
    thr = report.thresholds("split_cp")[0]
    assert report.methods["split_cp"]["group_interval_length"] == pytest.approx([2 * thr] * 3)


# ------------------------------------------------------------------------------------------ identity (issue 9 item 3)
def test_duplicate_partition_ids_are_excluded_and_reported(tmp_path):
    grid = InProcessGrid(user_app(), N_NODES)
    grid.contexts[grid.node_ids[4]].node_config["partition-id"] = 0  # claims node 0's identity (and its weight)
    report = run_conformal_rounds(grid, mixture_weights="1,1,1,1,4", **rounds(tmp_path))
    reasons = {e["node_id"]: e["reason"] for e in report.excluded}
    assert set(reasons) == {grid.node_ids[0], grid.node_ids[4]}
    assert "duplicate identity: partition-id 0" in reasons[grid.node_ids[0]]
    assert {n: report.thresholds(n) for n in ("gcfcp_delta250", "fedcp")} == core_fit([1, 2, 3], [1, 1, 1, 1, 4])


def test_identity_changed_in_evaluation_is_refused(tmp_path):
    grid = InProcessGrid(user_app(), N_NODES, faults={3: _set_meta("partition-id", 4, EVALUATE_MESSAGE_TYPE)})
    report = run_conformal_rounds(grid, mixture_weights=[1, 1, 1, 1, 4], **rounds(tmp_path))
    assert not report.excluded
    [e] = report.evaluation_excluded
    assert e["node_id"] == grid.node_ids[3] and "conflicting identity" in e["reason"]
    assert report.methods["fedcp"]["clients"] == [str(n) for n in grid.node_ids if n != grid.node_ids[3]]


def test_mixture_weights_bound_to_node_ids(tmp_path):
    grid = InProcessGrid(user_app(), N_NODES)
    weights = {nid: w for nid, w in zip(grid.node_ids, [1, 1, 1, 1, 4])}
    report = run_conformal_rounds(grid, mixture_weights=weights, **rounds(tmp_path))
    assert {n: report.thresholds(n) for n in ("gcfcp_delta250", "fedcp")} == core_fit(range(5), [1, 1, 1, 1, 4])
    assert report.thresholds("gcfcp_delta250") != core_fit(range(5))["gcfcp_delta250"]
    # a node without a weight is excluded, not given one
    del weights[grid.node_ids[2]]
    report = run_conformal_rounds(InProcessGrid(user_app(), N_NODES), mixture_weights=weights, **rounds())
    [e] = report.excluded
    assert "no mixture weight for node id" in e["reason"]


# ------------------------------------------------------------------------------------------ evaluation counts (issue 9 item 1)
def _counts(**changes):
    def fault(reply: Message) -> Message:
        rec = reply.content.array_records[COUNTS_KEY]
        for key, fn in changes.items():
            if fn is None:
                del rec[f"fedcp/{key}"]
            else:
                rec[f"fedcp/{key}"] = Array(np.ascontiguousarray(fn(rec[f"fedcp/{key}"].numpy())))
        return reply

    return {EVALUATE_MESSAGE_TYPE: fault}


BAD_COUNTS = {
    "covered > n": (dict(covered=lambda a: a + 10**6), "covered = "),
    "negative": (dict(group_covered=lambda a: a - 10**6), "group_covered[0] = "),
    "no n": (dict(n=None), "missing count(s) ['n']"),
    "group_n length": (dict(group_n=lambda a: a[:2]), "'group_n' must have shape (4,)"),
    "float counts": (dict(covered=lambda a: a.astype(np.float64)), "must hold integers"),
    "size > n L": (dict(size_sum=lambda a: a * 0 + 10**9), "size_sum = "),
    "class sum": (dict(class_n=lambda a: a + 1), "sum(class_n)"),
}


@pytest.mark.parametrize("case", sorted(BAD_COUNTS))
def test_bad_evaluation_counts_are_excluded_not_crashing(case, tmp_path):
    changes, reason = BAD_COUNTS[case]
    grid = InProcessGrid(user_app(), N_NODES, faults={2: _counts(**changes)})
    report = run_conformal_rounds(grid, **rounds(tmp_path))
    [e] = report.evaluation_excluded
    assert e["node_id"] == grid.node_ids[2] and reason in e["reason"], e["reason"]
    assert report.status == "evaluated" and len(report.methods["fedcp"]["clients"]) == 4
    assert 0 <= report.methods["fedcp"]["marginal_coverage"] <= 1
    assert "(evaluation)" in (tmp_path / "res" / "results.md").read_text()


def test_validate_counts_accepts_exact_bounds():
    ok = {
        "n": np.array([3]), "covered": np.array([3]), "size_sum": np.array([30]),
        "group_n": np.array([3, 0]), "group_covered": np.array([3, 0]), "group_size_sum": np.array([30, 0]),
        "class_n": np.array([1, 2, 0]), "class_covered": np.array([1, 2, 0]),
    }
    ok["size_sum"] = np.array([9])
    ok["group_size_sum"] = np.array([9, 0])
    assert validate_counts(ok, 2, 3)["covered"].tolist() == [3]
    with pytest.raises(ProtocolError, match="size_sum = 10"):
        validate_counts({**ok, "size_sum": np.array([10])}, 2, 3)
    with pytest.raises(ProtocolError, match="n = -1"):
        validate_counts({**ok, "n": np.array([-1])}, 2, 3)
    # counts whose int64 sum wraps around to n = 3 are refused (every count must be below 2**53)
    huge = {**ok, "class_n": np.array([2**62, 2**62, 2**62, 2**62 + 3]), "class_covered": np.array([1, 2, 0, 0])}
    assert int(huge["class_n"].sum()) == 3
    with pytest.raises(ProtocolError, match="'class_n' must be below 2\\*\\*53"):
        validate_counts(huge, 2, 4)
    wide = {**ok, "n": np.array([2**63], dtype=np.uint64)}
    with pytest.raises(ProtocolError, match="'n' must be below 2\\*\\*53"):
        validate_counts(wide, 2, 3)
    # a group without test points has no set size (interval lengths included)
    with pytest.raises(ProtocolError, match="group_size_sum\\[1\\] = 5"):
        validate_counts({**ok, "group_size_sum": np.array([9, 5])}, 2, 3)
    regression = {**ok, "class_n": np.array([3]), "class_covered": np.array([3]),
                  "size_sum": np.array([1.5]), "group_size_sum": np.array([1.5, np.inf])}
    with pytest.raises(ProtocolError, match="group_size_sum\\[1\\] = inf"):
        validate_counts(regression, 2, 1, interval_lengths=True)


def test_undecodable_or_foreign_byte_order_arrays_are_excluded_not_crashing(tmp_path):
    """A reply array that does not decode (bad bytes) or is big-endian is a malformed reply: the node is excluded."""
    from flwr.app import Array

    from flwr_gcfcp.flower.protocol import PAYLOAD_KEY

    bad = {
        1: lambda rec, key: rec.__setitem__(key, Array(dtype="float64", shape=(3,), stype="numpy.ndarray", data=b"junk")),
        3: lambda rec, key: rec.__setitem__(key, Array(np.asarray(rec[key].numpy()).astype(">u8"))),
    }

    class Tamper(InProcessGrid):
        def send_and_receive(self, messages, *, timeout=None):
            replies = list(super().send_and_receive(messages, timeout=timeout))
            for reply in replies:
                pid = self.node_ids.index(reply.metadata.src_node_id)
                if pid in bad and reply.has_content() and PAYLOAD_KEY in reply.content.array_records:
                    rec = reply.content.array_records[PAYLOAD_KEY]
                    bad[pid](rec, sorted(rec.keys())[0])
            return replies

    report = run_conformal_rounds(Tamper(user_app(), N_NODES), **rounds(tmp_path))
    reasons = {e["node_id"]: e["reason"] for e in report.excluded}
    grid_ids = InProcessGrid(user_app(), N_NODES).node_ids
    assert "does not decode" in reasons[grid_ids[1]]
    assert "native" in reasons[grid_ids[3]]
    assert report.status == "evaluated" and len(report.results["calibration_clients"]) == N_NODES - 2


# ------------------------------------------------------------------------------------------ nothing lost (issue 9 item 2)
def test_every_node_failing_evaluation_keeps_the_thresholds(tmp_path):
    faults = {i: {EVALUATE_MESSAGE_TYPE: "error"} for i in range(N_NODES)}
    report = run_conformal_rounds(InProcessGrid(user_app(), N_NODES, faults=faults), **rounds(tmp_path))
    assert report.status.startswith("evaluation failed") and len(report.evaluation_excluded) == N_NODES
    out = tmp_path / "res"
    data = json.loads((out / "results.json").read_text())
    assert data["status"].startswith("evaluation failed") and "thresholds and predictors are kept" in data["status"]
    for name in ("gcfcp_delta250", "fedcp"):
        saved = json.loads((out / f"predictor_{name}.json").read_text())
        assert saved == json.loads(json.dumps(report.predictors[name]))
    md = (out / "results.md").read_text()
    assert "evaluation failed" in md and md.count("(evaluation)") == N_NODES


class _EvaluationCrash(InProcessGrid):
    out = None

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == EVALUATE_MESSAGE_TYPE:
            # written before the evaluation round: the predictors; results.json only once the outcome is known
            assert (self.out / "predictor_fedcp.json").is_file() and not (self.out / "results.json").exists()
            raise ConnectionError("SuperLink went away")
        return super().send_and_receive(messages, timeout=timeout)


def test_a_crash_after_calibration_keeps_predictors_and_says_so(tmp_path):
    grid = _EvaluationCrash(user_app(), N_NODES)
    grid.out = tmp_path / "res"
    with pytest.raises(ConnectionError):
        run_conformal_rounds(grid, **rounds(tmp_path))
    out = tmp_path / "res"
    assert (out / "predictor_gcfcp_delta250.json").is_file() and (out / "predictor_fedcp.json").is_file()
    data = json.loads((out / "results.json").read_text())
    assert "evaluation failed (ConnectionError: SuperLink went away)" in data["status"]
    assert set(data["files"]["predictors"]) == {"gcfcp_delta250", "fedcp"}


# ------------------------------------------------------------------------------------------ arguments
def test_arguments_fail_early_and_clearly():
    grid = InProcessGrid(user_app(), 2)
    with pytest.raises(ValueError, match="byzantine_clients must be an integer >= 0"):
        run_conformal_rounds(grid, **rounds(byzantine_clients=-1))
    with pytest.raises(CalibrationError, match="byzantine_clients=2 needs more than"):
        run_conformal_rounds(grid, **rounds(byzantine_clients=2))
    with pytest.raises(ValueError, match="unknown method"):
        run_conformal_rounds(grid, **rounds(methods="nope"))
    with pytest.raises(ValueError, match="mixture_weights must be positive"):
        run_conformal_rounds(grid, **rounds(mixture_weights="1,-1"))
    with pytest.raises(CalibrationError, match="only 2 node"):
        run_conformal_rounds(grid, **rounds(min_clients=3, timeout=0.2))


def test_label_count_is_the_majority_of_the_nodes_unless_fixed(tmp_path):
    def outputs(arrays, context, split):
        probs, labels = local_data(int(context.node_config["partition-id"]), split)
        if int(context.node_config["partition-id"]) == 3:
            probs = np.hstack([probs, np.zeros((len(labels), 2))])  # 12 classes
        return probs, labels

    report = run_conformal_rounds(InProcessGrid(user_app(outputs), N_NODES), **rounds())
    [e] = report.excluded
    assert "reports 12 classes, most nodes report 10" in e["reason"]
    assert report.thresholds("fedcp") == core_fit([0, 1, 2, 4])["fedcp"]


def test_membership_matrix_groups_through_model_outputs():
    def outputs(arrays, context, split):
        probs, labels = local_data(int(context.node_config["partition-id"]), split)
        confident = probs.max(axis=1) > 0.5
        return ModelOutputs(probs=probs, labels=labels, membership=np.stack([confident, ~confident], axis=1))

    report = run_conformal_rounds(InProcessGrid(user_app(outputs), 3), **rounds(groups="matrix:2"))
    assert not report.excluded and sorted(report.thresholds("gcfcp_delta250")) == [1, 2]  # atom keys 2^0, 2^1
    assert all(c >= 0.85 for c in report.methods["gcfcp_delta250"]["group_coverage"])
    # a matrix of the wrong width is refused with the reason
    def bad(arrays, context, split):
        out = outputs(arrays, context, split)
        if int(context.node_config["partition-id"]) == 1:
            out.membership = np.ones((len(out.labels), 3), dtype=bool)
        return out

    report = run_conformal_rounds(InProcessGrid(user_app(bad), 3), **rounds(groups="matrix:2"))
    [e] = report.excluded
    assert "membership must be a bool (n, 2) matrix, got dtype bool shape (120, 3)" in e["reason"]


# ------------------------------------------------------------------------------------------ robust mode
def test_byzantine_robust_mode_flags_a_poisoned_node_and_equals_the_core(tmp_path):
    """byzantine_clients=1 through the Flower round: the node reporting certainty on every calibration point
    (scores all 0) is flagged with its reason; the thresholds equal the core's robust fit on the same payloads."""

    def outputs(arrays, context, split):
        pid = int(context.node_config["partition-id"])
        probs, labels = local_data(pid, split)
        if pid == 2 and split == "calibration":
            probs = np.eye(10)[labels]
        return probs, labels

    grid = InProcessGrid(user_app(outputs), N_NODES)
    report = run_conformal_rounds(grid, **rounds(tmp_path, byzantine_clients=1))
    data = json.loads((tmp_path / "res" / "results.json").read_text())
    assert data["byzantine_clients"] == 1
    assert [f["node_id"] for f in data["flagged_clients"]] == [grid.node_ids[2]]
    assert "robust screening" in data["flagged_clients"][0]["reason"]
    assert str(grid.node_ids[2]) not in {c["client"] for c in data["calibration_clients"]}
    assert "flagged by the robust screening" in (tmp_path / "res" / "results.md").read_text()

    groups = parse_groups(GROUPS)
    cals = make_calibrators(["gcfcp", "fedcp"], groups, 0.1, [250.0])
    payloads = {}
    for i, nid in enumerate(grid.node_ids):
        probs, labels = local_data(i, "calibration")
        if i == 2:
            probs = np.eye(10)[labels]
        scores = make_score("softmax").calibration_scores(probs, labels)
        payloads[str(nid)] = client_payload(cals, scores, probs)
    core = fit_all(cals, payloads, pi={c: 1.0 for c in payloads}, byzantine_clients=1)
    assert set(core.flagged) == {str(grid.node_ids[2])}
    for name, cal in core.calibrators.items():
        assert report.thresholds(name) == cal.thresholds
