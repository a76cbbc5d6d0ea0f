"""The shared calibration round: client payloads, server-side validation and fitting of every method at once.

The Flower layer only moves these arrays; all logic (payload building, validation, π renormalisation, fitting)
lives here so a simulation and an in-process run give the same thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core.summaries import DEFAULT_LIMITS, DigestSummary, PayloadError, PayloadLimits, allowed_atom_keys
from ..core.validation import exact_fraction
from .base import Calibrator
from .robust import check_byzantine_clients, fit_certified, screen_clients

__all__ = ["FitReport", "PayloadLimits", "client_payload", "fit_all", "fit_in_process", "payload_bytes"]


def client_payload(
    calibrators: Mapping[str, Calibrator],
    scores,
    features,
    pi_k: float | None = None,
    n_clients: int | None = None,
    *,
    labels=None,
    probs=None,
    rng=None,
) -> dict[str, np.ndarray]:
    """Client side of a shared calibration round: one block of arrays per summary kind (deduplicated).

    ``labels`` (true labels of the calibration points), ``probs`` (their probability rows) and ``rng`` (seed or
    generator of client-side randomness, e.g. the clustered split) go to the calibrators that declare them in
    ``extra_inputs`` (class-conditional and set-valued methods); the others ignore them.
    """
    extras = {"labels": labels, "probs": probs, "rng": rng}
    out: dict[str, np.ndarray] = {}
    done: set[str] = set()
    # a shared block must carry atom keys when any method using it has groups: summarize with those first
    for cal in sorted(calibrators.values(), key=lambda c: c.groups is None):
        if cal.summary_kind in done:
            continue
        done.add(cal.summary_kind)
        kw = {k: extras[k] for k in cal.extra_inputs}
        summary = cal.summarize(scores, features, pi_k=pi_k, n_clients=n_clients, **kw)
        arrays = summary.to_arrays() if hasattr(summary, "to_arrays") else summary
        for key, arr in arrays.items():
            out[f"{cal.summary_kind}/{key}"] = arr
    return out


def payload_bytes(payload: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Bytes per summary kind in a client payload: the arrays' ``nbytes`` exactly as they are sent.

    Compare with ``8 · n_k`` (the raw float64 scores alone; :attr:`FitReport.n_points` holds each n_k).
    """
    sizes: dict[str, int] = {}
    for key, arr in payload.items():
        kind = key.split("/", 1)[0]
        sizes[kind] = sizes.get(kind, 0) + int(np.asarray(arr).nbytes)
    return sizes


@dataclass
class FitReport:
    """Outcome of :func:`fit_all`.

    ``n_points`` holds each used client's n_k (its raw float64 scores would take ``8 · n_k`` bytes).
    """

    calibrators: dict[str, Calibrator]
    used: list[str]
    excluded: dict[str, str] = field(default_factory=dict)
    failed_methods: dict[str, str] = field(default_factory=dict)
    pi: dict[str, float] = field(default_factory=dict)
    n_points: dict[str, int] = field(default_factory=dict)
    #: clients left out by the robust screening (``byzantine_clients > 0``), with the reason
    flagged: dict[str, str] = field(default_factory=dict)


def _parse_payload(cal: Calibrator, payload: Mapping[str, np.ndarray], limits: PayloadLimits):
    prefix = cal.summary_kind + "/"
    block = {k[len(prefix) :]: v for k, v in payload.items() if k.startswith(prefix)}
    if not block:
        raise PayloadError(f"no '{cal.summary_kind}' block (needed by {cal.name})")
    if hasattr(cal, "parse_summary"):  # adapters validate their own blocks
        return cal.parse_summary(block, limits)
    if cal.summary_type is DigestSummary:
        return DigestSummary.from_arrays(block, cal.delta, allowed_atom_keys(cal.groups), limits)
    # a raw block may be shared with grouped methods: only those check its atom keys
    allowed = None if cal.groups is None else allowed_atom_keys(cal.groups)
    return cal.summary_type.from_arrays(block, allowed, limits)


def _parse_client(calibrators: Mapping[str, Calibrator], payload: Mapping[str, np.ndarray], limits: PayloadLimits,
                  floor: int) -> dict[str, object]:
    sent = sum(int(np.asarray(a).nbytes) for a in payload.values())
    if sent > limits.max_client_bytes:
        raise PayloadError(f"payload of {sent} bytes exceeds PayloadLimits.max_client_bytes = {limits.max_client_bytes}")
    parsed = {name: _parse_payload(cal, payload, limits) for name, cal in calibrators.items()}
    values = {cal.summary_kind: parsed[name].size for name, cal in calibrators.items()}
    if sum(values.values()) > limits.max_client_values:
        raise PayloadError(
            f"payload holds {sum(values.values())} values (clusters, scores, order statistics), more than "
            f"PayloadLimits.max_client_values = {limits.max_client_values}"
        )
    ns = {s.n for s in parsed.values()}
    if len(ns) > 1:
        raise PayloadError(f"summaries disagree on the number of calibration points: {sorted(ns)}")
    n = ns.pop() if ns else floor
    if n < floor:
        raise PayloadError(
            f"n_k = {n} calibration points is below the minimum {floor} (PayloadLimits.min_points; by default "
            "ceil((1 - alpha)/alpha), below which one client could make thresholds +inf)"
        )
    return parsed


def fit_all(
    calibrators: Mapping[str, Calibrator],
    payloads: Mapping[str, Mapping[str, np.ndarray]],
    pi: Mapping[str, float] | None = None,
    limits: PayloadLimits | None = None,
    byzantine_clients: int = 0,
) -> FitReport:
    """Server side: validate each client's payload, exclude malformed ones, renormalise π, fit every calibrator.

    Parameters
    ----------
    calibrators : mapping name -> Calibrator
    payloads : mapping client id -> arrays from :func:`client_payload`
    pi : mapping client id -> mixture weight, or None for uniform over the clients used
    limits : PayloadLimits, optional
        Bounds on each client's message and on each fit (default ``PayloadLimits()``; see its docstring).
    byzantine_clients : int, default 0
        Tolerate up to this many clients sending arbitrary well-formed summaries (see
        :mod:`flwr_gcfcp.methods.robust` and ``docs/robustness.md``); must be below the number of payloads.

    Returns
    -------
    FitReport
        ``excluded`` names each dropped client and the reason (malformed or inconsistent encoding, a digest that
        is not a δ-digest, impossible atom keys, n_k outside the limits, an oversized payload); π is
        renormalised over ``used``; a method whose fit would exceed ``limits.max_fit_values`` is in
        ``failed_methods``; ``flagged`` names each client the robust screening left out.
    """
    limits = DEFAULT_LIMITS if limits is None else limits
    if not isinstance(limits, PayloadLimits):
        raise ValueError(f"limits must be a PayloadLimits, got {type(limits).__name__}")
    alphas = [getattr(cal, "nominal_alpha", cal.alpha) for cal in calibrators.values()]
    floor = limits.points_floor(min(alphas)) if alphas else 0
    byzantine_clients = check_byzantine_clients(byzantine_clients, len(payloads))
    parsed: dict[str, dict[str, object]] = {}
    excluded: dict[str, str] = {}
    for cid, payload in payloads.items():
        try:
            parsed[cid] = _parse_client(calibrators, payload, limits, floor)
        except PayloadError as err:
            excluded[cid] = f"malformed payload: {err}"
    flagged = screen_clients(calibrators, parsed, byzantine_clients) if byzantine_clients else {}
    for cid in flagged:
        del parsed[cid]
    used = list(parsed)
    if pi is not None:
        missing = [c for c in used if c not in pi]
        if missing:
            raise ValueError(f"pi has no weight for clients {missing}")
        bad = {c: pi[c] for c in used if not (float(pi[c]) >= 0 and math.isfinite(float(pi[c])))}
        if bad:
            raise ValueError(f"pi must be finite and >= 0, got {bad}")
    pis = None if pi is None else [pi[c] for c in used]
    report = FitReport(calibrators=dict(calibrators), used=used, excluded=excluded, flagged=flagged)
    report.n_points = {c: next(iter(parsed[c].values())).n for c in used} if calibrators else {}
    if used:
        if pis is None:
            report.pi = {c: 1.0 / len(used) for c in used}
        else:
            total = sum(exact_fraction(p) for p in pis)
            report.pi = {c: float(exact_fraction(p) / total) for c, p in zip(used, pis)}
    if not used:
        return report
    leave_out = byzantine_clients - len(flagged)
    subsets = math.comb(len(used), leave_out) if 0 < leave_out < len(used) else 1
    for name, cal in calibrators.items():
        # the robust fit refits every leave-out subset: each subset's values count against the bound
        cost = sum(parsed[c][name].size for c in used) * subsets
        if cost > limits.max_fit_values:
            report.failed_methods[name] = (
                f"the fit would process {cost} values (clusters, scores, order statistics; {subsets} subset fit(s)) "
                f"from {len(used)} clients, more than PayloadLimits.max_fit_values = {limits.max_fit_values}"
            )
            continue
        try:
            fit_certified(cal, [parsed[c][name] for c in used], pis, leave_out)
        except (ValueError, PayloadError) as err:
            report.failed_methods[name] = str(err)
    return report


def fit_in_process(
    calibrator: Calibrator, client_scores: Sequence[np.ndarray], client_features: Sequence[object] | None = None, pi=None
) -> Calibrator:
    """Summarize each client's scores as a client would, then fit: the federated computation in one process."""
    k = len(client_scores)
    feats = client_features if client_features is not None else [None] * k
    pis = [None] * k if pi is None else [float(p) / float(sum(pi)) for p in pi]
    summaries = [calibrator.summarize(s, f, pi_k=p, n_clients=k) for s, f, p in zip(client_scores, feats, pis)]
    return calibrator.fit(summaries, pi)
