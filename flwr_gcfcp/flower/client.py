"""Client side of the conformal rounds: one call adds them to any Flower ``ClientApp``.

.. code-block:: python

    from flwr_gcfcp.flower import register_conformal_handlers

    def model_outputs(arrays: ArrayRecord, context: Context, split: str):
        model = load_my_model(arrays)                    # the model the server sends (possibly empty)
        x, y = my_data(context, split)                   # split is "calibration" or "test"
        return model.predict_proba(x), y                 # probs (n, L), labels (n,)

    register_conformal_handlers(app, model_outputs)

The score, groups, α, δ, methods and mixture weight come from the server's request; the node only produces model
outputs. A callback may also return a :class:`ModelOutputs` for regression (``predictions``, ``targets``; score
``residual``) or for groups defined on a covariate (``covariate``, interval groups) or given as a membership matrix
(``membership``, ``matrix:d`` groups).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from flwr.app import ArrayRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from ..core.groups import ConfidenceGroups, GroupSpec, IntervalGroups, MatrixGroups, parse_groups
from ..core.metrics import evaluation_counts
from ..core.scores import absolute_residual, make_score
from ..core.summaries import PayloadError
from ..core.validation import check_labels, check_probabilities, check_scores
from ..methods import client_payload, make_calibrators, set_mask_from_arrays, thresholds_from_arrays
from .protocol import (
    APP_CONFIG_KEY,
    CALIBRATE_ACTION,
    CONFIG_KEY,
    COUNTS_KEY,
    EVALUATE_ACTION,
    META_KEY,
    MODEL_KEY,
    PAYLOAD_KEY,
    PREDICTOR_KEY,
    REGRESSION_SCORE,
    SPLIT_CALIBRATION,
    SPLIT_TEST,
    ProtocolError,
    RoundConfig,
    meta_record,
    pack,
    unpack,
)

__all__ = ["ModelOutputs", "ModelOutputsFn", "OutputsError", "client_rng", "register_conformal_handlers"]

ERROR_CODE = 2  # Flower's "ClientApp raised an exception"
_RNG_STREAMS = {"cal": 1, "test": 2, "split": 3}


class OutputsError(ValueError):
    """The user's ``model_outputs`` returned something the conformal rounds cannot use; says what."""


@dataclass
class ModelOutputs:
    """What a node's model gives on one split of its local data.

    Classification: ``probs`` (n, L) rows of probabilities and ``labels`` (n,) integers in [0, L).
    Regression (server score ``"residual"``): ``predictions`` and ``targets`` (n,), score ``|y - f(x)|``.
    Groups on a covariate (``interval:...`` groups): ``covariate`` (n,). Groups given per point (``matrix:d``):
    ``membership`` (n, d) bool. Label-set and confidence groups read ``probs``.
    """

    probs: Any = None
    labels: Any = None
    predictions: Any = None
    targets: Any = None
    covariate: Any = None
    membership: Any = None


ModelOutputsFn = Callable[[ArrayRecord, Context, str], Union[ModelOutputs, tuple]]


def client_rng(seed: int, client: int, stream: str) -> np.random.Generator:
    """Client-side randomness: ``stream`` ``"cal"``/``"test"`` for randomized scores, ``"split"`` for the clustered
    class-conditional split; ``client`` is the node's ``partition-id`` (its node id when it has none)."""
    return np.random.default_rng([int(seed), int(client), _RNG_STREAMS[stream]])


@dataclass
class _Local:
    """One split scored under the server's setup."""

    scores: np.ndarray  # calibration: (n,) scores of the true labels; test: (n, L) score matrix
    labels: np.ndarray
    features: Any
    probs: np.ndarray | None
    n_labels: int
    groups: GroupSpec


def describe_exception(exc: BaseException) -> str:
    """``Type: first line of the message (file.py:line)``: where the exception was raised, in one line."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        text += f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})"
    return text


def _as_outputs(value: Any) -> ModelOutputs:
    if isinstance(value, ModelOutputs):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        return ModelOutputs(probs=value[0], labels=value[1])
    raise OutputsError(
        f"model_outputs must return (probs, labels) or a ModelOutputs, got {type(value).__name__}"
    )


def _wrap(what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ValueError as exc:
        raise OutputsError(f"model_outputs: {what}: {exc}") from None


def _features(out: ModelOutputs, groups: GroupSpec, probs: np.ndarray | None, n: int) -> Any:
    """What ``groups`` read: the covariate (interval groups), the membership matrix (matrix groups) or probs."""
    if isinstance(groups, IntervalGroups) and not isinstance(groups, ConfidenceGroups):
        if out.covariate is None:
            raise OutputsError(
                f"groups {groups.to_text()!r} are intervals of a covariate: return ModelOutputs(..., covariate=x)"
            )
        feats = _wrap("covariate", lambda: check_scores(out.covariate, name="covariate", ndim=1, allow_empty=True))
    elif isinstance(groups, MatrixGroups):
        if out.membership is None:
            raise OutputsError(
                f"groups {groups.to_text()!r} are given per point: return ModelOutputs(..., membership=matrix)"
            )
        feats = np.asarray(out.membership)
        if feats.ndim != 2 or feats.shape[1] != groups.n_groups or feats.dtype.kind not in "biu":
            raise OutputsError(
                f"model_outputs: membership must be a bool (n, {groups.n_groups}) matrix, got dtype {feats.dtype} "
                f"shape {feats.shape}"
            )
    else:
        if probs is None:
            raise OutputsError(
                f"groups {groups.to_text()!r} read the probability rows, which regression outputs do not have; "
                "use interval groups on a covariate"
            )
        feats = probs
    if len(feats) != n:
        raise OutputsError(f"model_outputs: the group features describe {len(feats)} points, the labels {n}")
    _wrap(f"groups {groups.to_text()!r}", lambda: groups.membership(feats))  # e.g. a point in no group
    return feats


def _score_split(
    model_outputs: ModelOutputsFn, msg: Message, context: Context, rc: RoundConfig, client: int
) -> _Local:
    arrays = msg.content.array_records.get(MODEL_KEY, ArrayRecord())
    try:
        raw = model_outputs(arrays, _user_context(msg, context), rc.split)
    except Exception as exc:  # the user's code: one line back to the server, not a traceback per node
        raise OutputsError(f"model_outputs raised {describe_exception(exc)}") from exc
    out = _as_outputs(raw)
    stream = "cal" if rc.split == SPLIT_CALIBRATION else "test"
    if rc.score == REGRESSION_SCORE:
        if out.predictions is None or out.targets is None:
            raise OutputsError("the server's score is 'residual' (regression): return ModelOutputs(predictions=, targets=)")
        residual = _wrap("predictions/targets", lambda: absolute_residual(out.targets, out.predictions))
        n = residual.shape[0]
        groups = parse_groups(rc.groups, n_labels=1)
        feats = _features(out, groups, None, n)
        scores = residual if rc.split == SPLIT_CALIBRATION else residual[:, None]
        return _Local(scores, np.zeros(n, dtype=np.int64), feats, None, 1, groups)
    if out.probs is None or out.labels is None:
        raise OutputsError(f"the server's score is {rc.score!r} (classification): return (probs, labels)")
    probs = _wrap("probs", lambda: check_probabilities(out.probs, name="probs"))
    n_labels = probs.shape[1]
    if rc.n_classes and n_labels != rc.n_classes:
        raise OutputsError(f"model_outputs: probs has {n_labels} columns but the server calibrates {rc.n_classes} classes")
    labels = _wrap("labels", lambda: check_labels(out.labels, n_labels, name="labels"))
    if labels.shape[0] != probs.shape[0]:
        raise OutputsError(f"model_outputs: probs has {probs.shape[0]} rows but labels has {labels.shape[0]} entries")
    try:
        groups = parse_groups(rc.groups, n_labels=n_labels)
    except ValueError as exc:
        raise OutputsError(f"model_outputs: probs has {n_labels} columns, which the server's groups do not fit: {exc}") from None
    feats = _features(out, groups, probs, labels.shape[0])
    score = make_score(rc.score)
    rng = client_rng(rc.seed, client, stream)
    scores = score.calibration_scores(probs, labels, rng=rng) if stream == "cal" else score.score_matrix(probs, rng=rng)
    return _Local(scores, labels, feats, probs, n_labels, groups)


def _user_context(msg: Message, context: Context) -> Context:
    """The node's context with the server's app settings (``APP_CONFIG_KEY``) over its run config."""
    extra = dict(msg.content.config_records[APP_CONFIG_KEY]) if APP_CONFIG_KEY in msg.content.config_records else {}
    if not extra:
        return context
    return Context(
        run_id=context.run_id,
        node_id=context.node_id,
        node_config=context.node_config,
        state=context.state,
        run_config={**dict(context.run_config), **extra},
    )


def _client_index(context: Context) -> int:
    pid = context.node_config.get("partition-id")
    return int(pid) if isinstance(pid, int) and not isinstance(pid, bool) else int(context.node_id)


def _meta(context: Context, local: _Local):
    values: dict[str, Any] = {"num-examples": int(local.labels.shape[0]), "n-classes": int(local.n_labels)}
    pid = context.node_config.get("partition-id")
    if isinstance(pid, int) and not isinstance(pid, bool):
        values["partition-id"] = int(pid)
    return meta_record(**values)


def _round_config(msg: Message, split: str) -> RoundConfig:
    if CONFIG_KEY not in msg.content.config_records:
        raise ProtocolError(f"request has no '{CONFIG_KEY}' ConfigRecord (is the server running flwr-gcfcp?)")
    rc = RoundConfig.from_record(msg.content.config_records[CONFIG_KEY])
    if rc.split != split:
        raise ProtocolError(f"a {msg.metadata.message_type} request must ask for split {split!r}, got {rc.split!r}")
    return rc


def _error_reply(msg: Message, exc: Exception) -> Message:
    return Message(Error(code=ERROR_CODE, reason=f"flwr-gcfcp: {type(exc).__name__}: {exc}"), reply_to=msg)


def calibration_reply(model_outputs: ModelOutputsFn, msg: Message, context: Context) -> Message:
    """Handle ``query.gcfcp_calibrate``: score the calibration split, reply with the summaries of every method."""
    try:
        rc = _round_config(msg, SPLIT_CALIBRATION)
        client = _client_index(context)
        local = _score_split(model_outputs, msg, context, rc, client)
        calibrators = make_calibrators(
            rc.methods, local.groups, rc.alpha, deltas=rc.deltas, conservative=rc.conservative, n_classes=local.n_labels
        )
        pi_k = rc.mixture_weight or 1.0 / rc.n_clients
        payload = client_payload(
            calibrators, local.scores, local.features, pi_k=pi_k, n_clients=rc.n_clients,
            labels=local.labels, probs=local.probs, rng=client_rng(rc.seed, client, "split"),
        )
    except (ProtocolError, OutputsError) as exc:
        return _error_reply(msg, exc)
    content = RecordDict({PAYLOAD_KEY: pack(payload), META_KEY: _meta(context, local)})
    return Message(content=content, reply_to=msg)


def evaluation_reply(model_outputs: ModelOutputsFn, msg: Message, context: Context) -> Message:
    """Handle ``query.gcfcp_evaluate``: apply every received rule to the test split, reply with the counts."""
    try:
        rc = _round_config(msg, SPLIT_TEST)
        if PREDICTOR_KEY not in msg.content.array_records:
            raise ProtocolError(f"evaluation request has no '{PREDICTOR_KEY}' ArrayRecord")
        predictor = unpack(msg.content.array_records[PREDICTOR_KEY])
        local = _score_split(model_outputs, msg, context, rc, _client_index(context))
        membership = local.groups.membership(local.features)
        out: dict[str, np.ndarray] = {}
        for name in rc.method_names:
            prefix = f"{name}/"
            arrays = {k[len(prefix) :]: v for k, v in predictor.items() if k.startswith(prefix)}
            if not arrays:
                raise ProtocolError(f"evaluation request has no rule for method {name!r}")
            for key, value in _method_counts(arrays, local, membership, rc).items():
                out[f"{name}/{key}"] = np.asarray(value)
    except (ProtocolError, OutputsError, PayloadError) as exc:
        return _error_reply(msg, exc)
    content = RecordDict({COUNTS_KEY: pack(out), META_KEY: _meta(context, local)})
    return Message(content=content, reply_to=msg)


def _method_counts(arrays: dict, local: _Local, membership: np.ndarray, rc: RoundConfig) -> dict[str, np.ndarray]:
    if "rule" in arrays:  # per-label thresholds (class-conditional) or a set-valued rule on the probabilities
        mask = set_mask_from_arrays(arrays, local.scores, local.features, local.groups, probs=local.probs)
        return evaluation_counts(mask, local.labels, membership)
    thr = thresholds_from_arrays(arrays, local.features, local.groups, n=local.scores.shape[0])
    counts = evaluation_counts(local.scores <= thr[:, None], local.labels, membership)
    if rc.score == REGRESSION_SCORE:  # interval f(x) ± threshold: the size is its length 2·threshold
        length = 2.0 * thr
        member = np.asarray(membership, dtype=bool)
        counts["size_sum"] = np.array([length.sum()], dtype=np.float64)
        counts["group_size_sum"] = np.array([length[member[:, g]].sum() for g in range(member.shape[1])], np.float64)
    return counts


def register_conformal_handlers(app: ClientApp, model_outputs: ModelOutputsFn) -> ClientApp:
    """Add the conformal calibration and evaluation handlers to a Flower ``ClientApp``.

    Parameters
    ----------
    app : flwr.clientapp.ClientApp
        The user's ClientApp; its ``@app.train`` / ``@app.evaluate`` handlers are left as they are.
    model_outputs : callable
        ``model_outputs(arrays, context, split)`` with ``arrays`` the model the server sends (an ``ArrayRecord``,
        possibly empty), ``context`` the node's ``Context`` (its run config overlaid with the server's app
        settings, if any) and ``split`` ``"calibration"`` or ``"test"``. Returns ``(probs (n, L), labels (n,))``
        or a :class:`ModelOutputs` (regression, covariate or membership groups).

    Returns
    -------
    ClientApp
        ``app`` (handlers for ``query.gcfcp_calibrate`` and ``query.gcfcp_evaluate`` registered).

    Notes
    -----
    Outputs with wrong shapes, NaN, rows that are not probabilities or labels out of range, and requests of another
    protocol version, get an error reply (code 2) whose reason names the problem; the server excludes the node and
    reports the reason. An exception raised inside ``model_outputs`` (a missing data file, ...) gets the same kind of
    reply, its reason one line: the exception's type, message and where it was raised (no traceback, so that N
    failing nodes give N short lines in the server log).
    """
    if not callable(model_outputs):
        raise TypeError(f"model_outputs must be callable, got {model_outputs!r}")

    @app.query(CALIBRATE_ACTION)
    def _gcfcp_calibrate(msg: Message, context: Context) -> Message:
        return calibration_reply(model_outputs, msg, context)

    @app.query(EVALUATE_ACTION)
    def _gcfcp_evaluate(msg: Message, context: Context) -> Message:
        return evaluation_reply(model_outputs, msg, context)

    return app
