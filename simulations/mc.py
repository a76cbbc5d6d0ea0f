"""Monte Carlo core: reuse one model's outputs across random calibration / test draws.

Every draw is calibrated with exactly the functions the Flower apps call:

* client side: :func:`flwr_gcfcp.methods.client_payload` (one call per client, the client's scores and features),
* server side: :func:`flwr_gcfcp.methods.fit_all` (payloads keyed by client id, mixture weights π),
* evaluation: per-client :func:`flwr_gcfcp.core.metrics.evaluation_counts`, combined by
  :func:`flwr_gcfcp.core.metrics.aggregate_counts` with the mixture weights (the federated evaluation round).

A prediction is one comparison per (point, label): ``score_matrix <= threshold[:, None]``. Thresholds come from
``Calibrator.thresholds_for``, which evaluates the per-atom thresholds the exact solver computed once.

Each method is summarised and fitted on its own (``client_payload({name: calibrator})``) so that bytes per client and
calibration time are attributed to the method that spends them.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from flwr_gcfcp.core.groups import parse_groups

__all__ = [
    "Draw",
    "MCResult",
    "run_monte_carlo",
    "summarize_runs",
    "groupwise_random_thresholds",
]


@dataclass
class Draw:
    """One Monte Carlo draw: calibration data split over clients, and a test set.

    Attributes
    ----------
    cal_scores : (n,) float
        Calibration nonconformity scores ``s(x_i, y_i)``.
    cal_features : array (n, ...)
        What the group definition reads (predicted labels, probabilities, a covariate).
    cal_client : (n,) int
        Client index of each calibration point, in ``range(n_clients)``.
    test_score_matrix : (m, L) float
        Score of every candidate label for every test point (``L = 1`` for regression: the true response).
    test_labels : (m,) int
        Index of the true label in ``test_score_matrix`` (zeros for regression).
    test_features : array (m, ...)
    test_client : (m,) int or None
        Client (mixture component) of each test point, for mixture-weighted evaluation; ``None``: pooled evaluation.
    extra : dict
        Anything an experiment wants to keep (e.g. regression predictions for plotting).
    """

    cal_scores: np.ndarray
    cal_features: np.ndarray
    cal_client: np.ndarray
    test_score_matrix: np.ndarray
    test_labels: np.ndarray
    test_features: np.ndarray
    test_client: np.ndarray | None
    n_clients: int
    extra: dict = field(default_factory=dict)


@dataclass
class MCResult:
    """Per-run arrays for each method (runs along axis 0)."""

    method_names: list[str]
    group_names: list[str]
    alpha: float
    runs: dict[str, dict[str, list]]  # method -> metric -> list over runs
    last_calibrators: dict = field(default_factory=dict)
    last_draw: Draw | None = None
    excluded: dict = field(default_factory=dict)


def _core():
    import flwr_gcfcp.methods as calibrators
    from flwr_gcfcp.core import metrics  # noqa: WPS433 (imported late: the core may land after this file)

    return calibrators, metrics


def _pi_dict(client_ids: Sequence[str], pi: Sequence[float] | None) -> dict[str, float] | None:
    if pi is None:
        return None
    return {cid: float(p) for cid, p in zip(client_ids, pi)}


def run_monte_carlo(
    draw_fn: Callable[[np.random.Generator], Draw],
    groups,
    methods: Sequence[str],
    alpha: float,
    mc: int,
    seed: int = 0,
    deltas: Sequence[float] = (250,),
    conservative: bool = False,
    pi: Sequence[float] | None = None,
    progress: bool = True,
    desc: str = "Monte Carlo",
    keep_last: bool = True,
    extra_methods: Mapping[str, Callable] | None = None,
    fedcp_delta: float | None = None,
) -> MCResult:
    """Run ``mc`` independent draws and calibrate every method on each.

    Parameters
    ----------
    draw_fn : callable(rng) -> Draw
        Produces one calibration / test draw from a ``numpy.random.Generator``.
    groups : flwr_gcfcp.core.groups.GroupSpec
    methods : method names for :func:`make_calibrators` (``"gcfcp"`` expands per δ).
    alpha : float
    mc : int
        Number of Monte Carlo draws.
    seed : int
        Seeds ``numpy.random.default_rng(seed)``; run r uses the r-th spawned child generator, so a run's draw does
        not depend on ``mc``.
    deltas, conservative : passed to :func:`make_calibrators`.
    pi : mixture weights per client (default uniform).
    extra_methods : {name: fn(draw, groups, alpha, pi_vec, rng) -> thresholds (m,)}
        Baselines outside the calibrator API (e.g. :func:`groupwise_random_thresholds`), evaluated the same way.
    fedcp_delta : float, optional
        δ of FedCP's digests. ``make_calibrators`` gives FedCP the first of ``deltas``; with this set, FedCP is built
        by its own ``make_calibrators(["fedcp"], ..., deltas=(fedcp_delta,))`` call instead (same class, same API).
    """
    calibrators_mod, metrics_mod = _core()
    if mc < 1:
        raise ValueError(f"mc must be >= 1, got {mc!r}")
    children = np.random.SeedSequence(seed).spawn(mc)
    group_names = list(getattr(groups, "names", [f"G{g + 1}" for g in range(groups.n_groups)]))
    runs: dict[str, dict[str, list]] = {}
    excluded: dict = {}
    last_cals: dict = {}
    last_draw = None
    method_names: list[str] = []

    iterator = range(mc)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=desc, unit="run", leave=False)

    for r in iterator:
        rng = np.random.default_rng(children[r])
        draw = draw_fn(rng)
        K = int(draw.n_clients)
        client_ids = [str(k) for k in range(K)]
        present = [k for k in range(K) if np.any(draw.cal_client == k)]
        pi_vec = np.full(K, 1.0 / K) if pi is None else np.asarray(pi, dtype=float) / float(np.sum(pi))
        pi_map = _pi_dict([client_ids[k] for k in present], [pi_vec[k] for k in present])
        cals = _make(calibrators_mod, methods, groups, alpha, deltas, conservative, fedcp_delta)
        if not method_names:
            method_names = list(cals)
        # Test-time quantities shared by every method.
        membership = np.asarray(groups.membership(draw.test_features), dtype=bool)
        if draw.test_client is None:
            eval_parts = {"all": np.arange(len(draw.test_labels))}
            eval_pi = None
        else:
            eval_parts = {client_ids[k]: np.flatnonzero(draw.test_client == k) for k in range(K)}
            eval_parts = {cid: idx for cid, idx in eval_parts.items() if idx.size}
            eval_pi = {cid: float(pi_vec[int(cid)]) for cid in eval_parts}
        client_idx = {k: np.flatnonzero(draw.cal_client == k) for k in present}

        for name, cal in cals.items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                rec = _run_method(calibrators_mod, metrics_mod, name, cal, draw, present, client_idx, client_ids,
                                  pi_vec, pi_map, K, membership, eval_parts, eval_pi, runs, excluded)
            counts_w = rec.setdefault("warnings", {})
            for w in caught:
                key = w.category.__name__
                counts_w[key] = counts_w.get(key, 0) + 1
            if r == mc - 1 and keep_last:
                last_cals[name] = rec.pop("_fitted")
            else:
                rec.pop("_fitted", None)
        for name, fn in (extra_methods or {}).items():
            if name not in method_names:
                method_names.append(name)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                thr = np.asarray(fn(draw, groups, alpha, pi_vec, rng), dtype=float)
            t_fit = time.perf_counter() - t0
            _record(runs.setdefault(name, {}), metrics_mod, draw, thr, membership, eval_parts, eval_pi,
                    nbytes=float("nan"), raw_nbytes=float("nan"), client_s=float("nan"), fit_s=t_fit,
                    predict_s=float("nan"))
        if r == mc - 1 and keep_last:
            last_draw = draw
    return MCResult(method_names, group_names, float(alpha), runs, last_cals, last_draw, excluded)


def groupwise_random_thresholds(draw: Draw, groups, alpha, pi_vec, rng: np.random.Generator) -> np.ndarray:
    """Group-wise federated CP with random overlap tie-breaking (the construction of App. E.2's baselines).

    Each group is calibrated on its own, as a federated split CP over the clients holding points of that group
    (λ_k = π_k / (n_{k,g} + 1), π renormalised over those clients, exact weighted rank from ``quantiles``); a test
    point lying in several groups uses the threshold of one of them drawn uniformly at random. This is *not* FedCF
    or personalized FCP (neither is implemented here); it isolates the mechanism the paper blames for their
    under-coverage on overlapping groups: treating each group independently.
    """
    from fractions import Fraction

    from flwr_gcfcp.core.quantiles import client_lambdas, weighted_conformal_threshold

    cal_m = np.asarray(groups.membership(draw.cal_features), dtype=bool)
    test_m = np.asarray(groups.membership(draw.test_features), dtype=bool)
    d = cal_m.shape[1]
    q = np.full(d, np.inf)
    for g in range(d):
        in_g = cal_m[:, g]
        ks = [k for k in range(draw.n_clients) if np.any(in_g & (draw.cal_client == k))]
        if not ks:
            continue
        n_k = [int(np.sum(in_g & (draw.cal_client == k))) for k in ks]
        lam = client_lambdas(n_k, [Fraction(float(pi_vec[k])) for k in ks])
        weights = np.empty(int(in_g.sum()))
        clients_g = draw.cal_client[in_g]
        for k, l in zip(ks, lam):
            weights[clients_g == k] = float(l)
        # client_lambdas renormalises π over ks: the weighted rule's total weight is Σ π_k = 1.
        q[g] = weighted_conformal_threshold(draw.cal_scores[in_g], weights, alpha, 1)
    # random eligible group per test point
    u = rng.random(test_m.shape)
    pick = np.argmax(np.where(test_m, u, -1.0), axis=1)
    return q[pick]


def _record(rec: dict, metrics_mod, draw, thr, membership, eval_parts, eval_pi, *, nbytes, raw_nbytes, client_s, fit_s,
            predict_s) -> None:
    """Evaluate the sets ``score <= thr`` on each client's test points, aggregate with π, append to ``rec``."""
    mask = draw.test_score_matrix <= thr[:, None]
    counts = {
        cid: metrics_mod.evaluation_counts(mask[idx], draw.test_labels[idx], membership[idx])
        for cid, idx in eval_parts.items()
    }
    agg = metrics_mod.aggregate_counts(counts, eval_pi)
    for key, value in (
        ("marginal_coverage", float(agg["marginal_coverage"])),
        ("marginal_set_size", float(agg["marginal_set_size"])),
        ("group_coverage", np.asarray(agg["group_coverage"], dtype=float)),
        ("group_set_size", np.asarray(agg["group_set_size"], dtype=float)),
        ("bytes_per_client", nbytes),
        ("raw_bytes_per_client", raw_nbytes),
        ("client_time_s", client_s),
        ("fit_time_s", fit_s),
        ("predict_time_s", predict_s),
        ("finite_threshold_fraction", float(np.mean(np.isfinite(thr)))),
        ("group_mean_threshold", _group_means(thr, membership)),
    ):
        rec.setdefault(key, []).append(value)


def _group_means(values: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over the test points of each group (nan for an empty group; inf stays inf)."""
    counts = membership.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sums = np.array([values[membership[:, g]].sum() if counts[g] else np.nan for g in range(membership.shape[1])])
        return sums / np.where(counts > 0, counts, 1)


def _run_method(calibrators_mod, metrics_mod, name, cal, draw, present, client_idx, client_ids, pi_vec, pi_map, K,
                membership, eval_parts, eval_pi, runs, excluded) -> dict:
    """Client payloads, server fit, prediction and evaluation counts of one method on one draw."""
    single = {name: cal}
    t0 = time.perf_counter()
    payloads = {}
    nbytes, raw = [], []
    for k in present:
        idx = client_idx[k]
        p = calibrators_mod.client_payload(
            single, draw.cal_scores[idx], _take(draw.cal_features, idx), float(pi_vec[k]), K
        )
        payloads[client_ids[k]] = p
        nbytes.append(sum(calibrators_mod.payload_bytes(p).values()))
        raw.append(8 * len(idx))  # the client's float64 scores alone
    t_client = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = calibrators_mod.fit_all(single, payloads, pi=pi_map)
    t_fit = time.perf_counter() - t0
    if getattr(report, "excluded", None):
        excluded.setdefault(name, []).append(dict(report.excluded))
    if getattr(report, "failed_methods", None):
        raise RuntimeError(f"fit_all failed for {name}: {report.failed_methods}")
    fitted = report.calibrators[name] if hasattr(report, "calibrators") else cal
    t0 = time.perf_counter()
    thr = np.asarray(fitted.thresholds_for(draw.test_features), dtype=float)
    t_pred = time.perf_counter() - t0  # per-point thresholds; the comparison in _record is microseconds
    rec = runs.setdefault(name, {})
    _record(rec, metrics_mod, draw, thr, membership, eval_parts, eval_pi,
            nbytes=float(np.mean(nbytes)) if nbytes else 0.0, raw_nbytes=float(np.mean(raw)) if raw else 0.0, client_s=t_client / max(len(present), 1),
            fit_s=t_fit, predict_s=t_pred)
    rec["_fitted"] = fitted
    return rec


def _make(calibrators_mod, methods, groups, alpha, deltas, conservative, fedcp_delta):
    methods = list(methods)
    if fedcp_delta is None or "fedcp" not in methods:
        return calibrators_mod.make_calibrators(methods, groups, alpha, deltas=tuple(deltas), conservative=conservative)
    out = {}
    for m in methods:
        if m == "fedcp":
            out.update(calibrators_mod.make_calibrators(["fedcp"], groups, alpha, deltas=(fedcp_delta,)))
        else:
            out.update(
                calibrators_mod.make_calibrators([m], groups, alpha, deltas=tuple(deltas), conservative=conservative)
            )
    return out


def _take(features, idx):
    return np.asarray(features)[idx]


def _mean_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values, axis=0)
        n = np.sum(np.isfinite(values), axis=0)
        sd = np.nanstd(values, axis=0, ddof=1) if values.shape[0] > 1 else np.zeros_like(mean)
        se = np.where(n > 1, sd / np.sqrt(np.maximum(n, 1)), 0.0)
    return mean, se


def summarize_runs(result: MCResult) -> dict:
    """Average over runs: the JSON ``methods`` block of the issue's format (plus timing and bytes)."""
    out = {}
    for name in result.method_names:
        rec = result.runs[name]
        gc, gc_se = _mean_se(np.vstack(rec["group_coverage"]))
        gs, _ = _mean_se(np.vstack(rec["group_set_size"]))
        mc_, mc_se = _mean_se(np.asarray(rec["marginal_coverage"]))
        ms, _ = _mean_se(np.asarray(rec["marginal_set_size"]))
        gt, _ = _mean_se(np.vstack(rec["group_mean_threshold"]))
        out[name] = {
            "marginal_coverage": float(mc_),
            "marginal_coverage_se": float(mc_se),
            "group_coverage": [float(v) for v in gc],
            "group_coverage_se": [float(v) for v in gc_se],
            "group_set_size": [float(v) for v in gs],
            "marginal_set_size": float(ms),
            "group_mean_threshold": [float(v) for v in gt],
            "bytes_per_client": float(np.mean(rec["bytes_per_client"])),
            "raw_bytes_per_client": float(np.mean(rec["raw_bytes_per_client"])),
            "client_time_s": float(np.mean(rec["client_time_s"])),
            "fit_time_s": float(np.mean(rec["fit_time_s"])),
            "predict_time_s": float(np.mean(rec["predict_time_s"])),
            "finite_threshold_fraction": float(np.mean(rec["finite_threshold_fraction"])),
            "warnings": dict(rec.get("warnings", {})),
        }
    return out


def classification_draw_fn(
    score_matrix: np.ndarray,
    labels: np.ndarray,
    features: np.ndarray,
    client_of_label: np.ndarray,
    n_cal: int,
    n_clients: int,
    mixture_eval: bool = True,
) -> Callable[[np.random.Generator], Draw]:
    """Random calibration / test split of one model's outputs; calibration points go to clients by true label.

    ``client_of_label[y]`` is the client holding class ``y``; ``-1`` means no client holds it, and such points are left
    out of both calibration and evaluation (the test distribution is the clients' mixture).
    """
    score_matrix = np.asarray(score_matrix, dtype=float)
    labels = np.asarray(labels, dtype=np.int64)
    features = np.asarray(features)
    client_of_label = np.asarray(client_of_label, dtype=np.int64)
    n = len(labels)
    if not 0 < n_cal < n:
        raise ValueError(f"n_cal must be in (0, {n}), got {n_cal!r}")
    point_client = client_of_label[labels]
    held = point_client >= 0
    cal_scores_all = score_matrix[np.arange(n), labels]

    def draw(rng: np.random.Generator) -> Draw:
        perm = rng.permutation(n)
        cal, test = perm[:n_cal], perm[n_cal:]
        cal = cal[held[cal]]
        test = test[held[test]]
        return Draw(
            cal_scores=cal_scores_all[cal],
            cal_features=features[cal],
            cal_client=point_client[cal],
            test_score_matrix=score_matrix[test],
            test_labels=labels[test],
            test_features=features[test],
            test_client=point_client[test] if mixture_eval else None,
            n_clients=n_clients,
        )

    return draw


def parse_client_classes(text: str, n_classes: int) -> tuple[list[list[int]], np.ndarray]:
    """``"0,1;2,3;4-5"`` -> client label lists and the class -> client map (``-1`` for classes nobody holds).

    The text uses the label-set syntax of :func:`flwr_gcfcp.parse_groups`; a class may belong to one client only.
    """
    try:
        spec = parse_groups(str(text), n_labels=n_classes)
    except ValueError as err:
        raise ValueError(f"client_classes {text!r}: {err}") from None
    clients = [sorted(int(y) for y in labs) for labs in spec.label_sets]
    owner = np.full(n_classes, -1, dtype=np.int64)
    for k, labs in enumerate(clients):
        for y in labs:
            if owner[y] >= 0:
                raise ValueError(f"client_classes gives class {y!r} to clients {owner[y]} and {k}")
            owner[y] = k
    return clients, owner
