"""Speed and exactness benchmark of the exact per-atom engine on the paper's CIFAR-10 setting (issue 2, item 7).

Usage::

    python -m simulations.benchmark [--json PATH] [--data-dir DIR] [--appd-points N] [--condconf-points N]
                                    [--seed S] [--condconf-mode auto|exact|bisection|off] [--condconf-python PY]

Setting (GC-FCP §6.2): ResNet-56 CIFAR-10 test outputs (``<data-dir>/logits/cifar10_resnet56_test_logits.npz``;
a seeded synthetic stand-in of the same shape when the file is absent — the output says which), a random split
into n = 5000 calibration and 5000 test points, 10 labels, K = 5 clients holding the calibration points of true
classes {0,1}, {2,3}, ..., {8,9}, groups ``0-3;2-5;4-7;6-9`` by predicted label, α = 0.1, score ``1 - p_y``.

What is timed (``time.perf_counter``, median over ``--repeats``):

* ``calibrate_ms`` — server-side fit of centralized GC-FCP (raw scores, weights λ_k = π_k/(n_k + 1)): the exact
  engine computing S* for every atom, i.e. the same problem the App. D reference solves. CondCP (equal weights) and
  GC-FCP δ = 250 (from the clients' per-atom digests) are reported as extra keys.
* ``predict_us_per_point`` — ``Calibrator.predict`` building the (n_test, 10) set mask from the thresholds
  (features -> atom keys -> thresholds -> comparison), divided by n_test.
* ``appd_ms_per_point`` — the paper's App. D bisection (one HiGHS LP per step) for each of ``--appd-points``
  distinct test points at the paper's natural tolerance 1e-3. App. D solves per test point, so it is run per
  point. Agreement is checked with a second App. D run at 1e-10 (fine enough to be exact at these scores):
  ``disagreements_vs_appd`` counts subset points whose set differs at 1e-10; the 1e-3 count is an extra key
  (the coarse tolerance itself changes some sets).
* ``condconf_ms_per_point`` — ``conditionalconformal.CondConf`` (Gibbs et al.) with the group-indicator feature map
  on the same pooled calibration scores, equal weights, i.e. CondCP's problem; median over ``--condconf-points``
  test points after ``setup_problem`` (its one-off calibration LP is cached by the library and reported
  separately, which favours it). Its exact mode needs numpy < 2 (on numpy 2 it fails with "setting an array
  element with a sequence"); its bisection mode runs on numpy 2. ``--condconf-mode auto`` tries exact and falls
  back to bisection; ``--condconf-python`` runs this part in another interpreter, e.g. a venv with numpy < 2::

      python -m venv --system-site-packages /tmp/np1venv
      /tmp/np1venv/bin/pip install "numpy<2" "cvxpy<1.7" conditionalconformal

  The mode used is reported (``condconf_mode``).
* ``digest_build_ms_1e6`` — ``build_digest`` on 1e6 uniform scores at δ = 250 (unit weights; random float weights
  as an extra key); ``fastdigest_build_ms_1e6`` — the ``fastdigest`` package on the same values with as many
  centroids as our digest keeps (and with ``max_centroids = 250`` as an extra key).

Speedups use the exact engine's cost per test point = (calibrate + predict all n_test points) / n_test:
centralized GC-FCP for App. D, CondCP for ``conditionalconformal``. ``conditionalconformal`` and ``fastdigest``
are optional (the ``bench`` extra); their keys are null when they are not importable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

REQUIRED_KEYS = (
    "calibrate_ms",
    "predict_us_per_point",
    "appd_ms_per_point",
    "speedup_vs_appd",
    "condconf_ms_per_point",
    "speedup_vs_condconf",
    "disagreements_vs_appd",
    "disagreements_vs_condconf",
    "digest_build_ms_1e6",
    "fastdigest_build_ms_1e6",
)

DATA_FILE = "logits/cifar10_resnet56_test_logits.npz"
GROUPS = "0-3;2-5;4-7;6-9"
CLIENT_CLASSES = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
N_LABELS = 10
ALPHA = 0.1
DELTA = 250.0
APPD_TIMING_TOL = 1e-3
APPD_AGREEMENT_TOL = 1e-10


# ---------------------------------------------------------------------------------------------------- helpers
def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time (seconds) of ``fn()`` over ``repeats`` calls, and the last result."""
    times, out = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if math.isnan(x):
            return None
        return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")
    return obj


def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else float(f"{x:.{digits}g}")


def default_data_dir() -> Path:
    env = os.environ.get("FLWR_GCFCP_DATA", "").strip()
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import scipy

    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# ---------------------------------------------------------------------------------------------------- data
def synthetic_outputs(n: int = 10000, n_labels: int = N_LABELS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stand-in for the CIFAR-10 ResNet-56 test outputs: (n, L) probabilities, ~90% top-1 accuracy."""
    rng = np.random.default_rng([seed, 20240610])
    labels = rng.integers(0, n_labels, n)
    logits = rng.normal(0.0, 1.0, (n, n_labels))
    logits[np.arange(n), labels] += rng.gamma(4.0, 1.1, n)
    logits *= rng.uniform(1.0, 3.0, (n, 1))  # per-image confidence
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs, labels.astype(np.int64)


def load_outputs(data_dir: Path | None, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    path = Path(data_dir if data_dir is not None else default_data_dir()) / DATA_FILE
    if path.is_file():
        from flwr_gcfcp.app.datasets import load_model_outputs

        probs, labels = load_model_outputs(path)
        return probs, labels, f"real: {path}"
    probs, labels = synthetic_outputs(10000, N_LABELS, seed)
    return probs, labels, f"synthetic stand-in (seed {seed}; {path} not found)"


# ---------------------------------------------------------------------------------------------------- conditionalconformal
def condconf_run(phi_cal: np.ndarray, scores: np.ndarray, phi_test: np.ndarray, alpha: float, mode: str) -> dict:
    """Run ``conditionalconformal.CondConf`` per test point; return cutoffs, per-point times and the mode used.

    Features are the group-membership rows themselves (``Phi_fn`` = identity on them) and the "labels" passed to
    ``setup_problem`` are the scores (``score_fn(x, y) = y``), so the library solves exactly CondCP's problem.
    """
    out: dict[str, Any] = {"numpy": np.__version__, "python": sys.executable, "note": ""}
    try:
        from conditionalconformal import CondConf
    except Exception as err:  # noqa: BLE001 - any import failure means "not measured"
        out.update(error=f"conditionalconformal not importable: {err!r}")
        return out
    d = phi_cal.shape[1]
    phi_fn = lambda x: np.asarray(x, dtype=float).reshape(-1, d)  # noqa: E731
    cutoff_of = lambda c, x: float(np.asarray(c, dtype=float).reshape(-1)[0])  # noqa: E731

    def setup() -> Any:
        cc = CondConf(score_fn=lambda x, y: np.asarray(y, dtype=float), Phi_fn=phi_fn, seed=0)
        cc.setup_problem(np.asarray(phi_cal, dtype=float), np.asarray(scores, dtype=float))
        return cc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        cc = setup()
        out["setup_ms"] = (time.perf_counter() - t0) * 1e3
        modes = ["exact", "bisection"] if mode == "auto" else [mode]
        for m in modes:
            cutoffs, times = [], []
            try:
                for row in np.asarray(phi_test, dtype=float):
                    t0 = time.perf_counter()
                    c = cc.predict(1 - alpha, row.reshape(1, d), cutoff_of, exact=(m == "exact"))
                    times.append(time.perf_counter() - t0)
                    cutoffs.append(c)
            except Exception as err:  # noqa: BLE001
                out["note"] += f"{m} mode failed on numpy {np.__version__}: {type(err).__name__}: {str(err).rstrip('.')}. "
                continue
            out.update(mode=m, cutoffs=cutoffs, times_s=times)
            return out
    out["error"] = out["note"].strip() or "no mode ran"
    return out


def _condconf_subprocess(python: str, phi_cal, scores, phi_test, alpha: float, mode: str) -> dict:
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        inp, outp = Path(tmp) / "in.npz", Path(tmp) / "out.json"
        np.savez(inp, phi_cal=phi_cal, scores=scores, phi_test=phi_test, alpha=alpha, mode=mode)
        proc = subprocess.run(
            [python, "-m", "simulations.benchmark", "--condconf-worker", str(inp), str(outp)],
            cwd=repo, capture_output=True, text=True, timeout=3600,
        )
        if proc.returncode != 0 or not outp.is_file():
            return {"error": f"worker {python} failed (rc {proc.returncode}): {proc.stderr.strip()[-800:]}"}
        return json.loads(outp.read_text())


def _condconf_worker(inp: str, outp: str) -> None:
    with np.load(inp) as z:
        res = condconf_run(z["phi_cal"], z["scores"], z["phi_test"], float(z["alpha"]), str(z["mode"]))
    Path(outp).write_text(json.dumps(res))


# ---------------------------------------------------------------------------------------------------- digests
def digest_benchmark(n: int, seed: int, repeats: int) -> dict:
    from flwr_gcfcp.core.tdigest import build_digest

    rng = np.random.default_rng([seed, 1])
    x = rng.random(n)
    w = 1.0 - rng.random(n)  # (0, 1]
    t_unit, dig = _median_time(lambda: build_digest(x, None, delta=DELTA), repeats)
    t_w, dig_w = _median_time(lambda: build_digest(x, w, delta=DELTA), repeats)
    out = {
        "digest_n": n,
        "digest_build_ms": t_unit * 1e3,
        "digest_build_weighted_ms": t_w * 1e3,
        "digest_clusters": int(dig.n_clusters),
        "digest_clusters_weighted": int(dig_w.n_clusters),
        "fastdigest_build_ms": None,
        "fastdigest_build_ms_max_centroids_250": None,
        "fastdigest_note": "",
    }
    try:
        import fastdigest
        from fastdigest import TDigest as FastTDigest
    except Exception as err:  # noqa: BLE001
        out["fastdigest_note"] = f"fastdigest not importable: {err!r}"
        return out
    mc = int(dig.n_clusters)
    t_fd, fd = _median_time(lambda: FastTDigest.from_values(x, max_centroids=mc), repeats)
    t_fd250, fd250 = _median_time(lambda: FastTDigest.from_values(x, max_centroids=int(DELTA)), repeats)
    out.update(
        fastdigest_version=getattr(fastdigest, "__version__", "?"),
        fastdigest_build_ms=t_fd * 1e3,
        fastdigest_centroids=int(fd.n_centroids),
        fastdigest_build_ms_max_centroids_250=t_fd250 * 1e3,
        fastdigest_note=f"fastdigest TDigest.from_values(values, max_centroids={mc}) = as many centroids as ours "
        f"(unit weights; it has no weighted bulk build)",
    )
    return out


# ---------------------------------------------------------------------------------------------------- main benchmark
def run_benchmark(
    data_dir: Path | None = None,
    appd_points: int = 20,
    condconf_points: int | None = None,
    seed: int = 0,
    n_cal: int = 5000,
    n_test: int = 5000,
    repeats: int = 7,
    digest_n: int = 1_000_000,
    condconf_mode: str = "auto",
    condconf_python: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    from flwr_gcfcp.methods import CentralizedGCFCP, CondCP, GCFCP
    from flwr_gcfcp.core.groups import parse_groups, pattern_keys
    from flwr_gcfcp.core.quantiles import client_lambdas
    from flwr_gcfcp.core import reference
    from flwr_gcfcp.core.reference import appd_threshold
    from flwr_gcfcp.core.scores import LACScore

    probs, labels, source = load_outputs(data_dir, seed)
    n_all = probs.shape[0]
    if n_cal + n_test > n_all:
        raise ValueError(f"n_cal + n_test must be <= {n_all} (the data), got {n_cal} + {n_test}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_all)
    cal, test = perm[:n_cal], perm[n_cal : n_cal + n_test]
    smat = LACScore().score_matrix(probs)
    pred = np.argmax(probs, axis=1).astype(np.int64)
    groups = parse_groups(GROUPS, n_labels=N_LABELS)
    log(f"data: {source}")
    log(f"n_cal={n_cal}, n_test={n_test}, labels={N_LABELS}, K={len(CLIENT_CLASSES)} clients {CLIENT_CLASSES} "
        f"(true classes), groups {GROUPS} (predicted label), alpha={ALPHA}, score 1 - p_y, seed {seed}")

    # clients: calibration points by true class (client order = pooled order used by the references below)
    client_idx = [cal[np.isin(labels[cal], cls)] for cls in CLIENT_CLASSES]
    client_idx = [c for c in client_idx if c.size]
    K = len(client_idx)
    pooled = np.concatenate(client_idx)
    cal_scores = smat[pooled, labels[pooled]]
    cal_pred = pred[pooled]
    n_k = [int(c.size) for c in client_idx]
    lams = client_lambdas(n_k)
    lam_per_point = np.concatenate([np.full(n, float(l)) for n, l in zip(n_k, lams)])
    test_weight = float(sum(lams))
    test_smat, test_pred = smat[test], pred[test]

    # ---------------- exact engine: server-side fits (client summaries prepared once, as clients would)
    cals = {"centralized_gcfcp": CentralizedGCFCP(groups, ALPHA), "condcp": CondCP(groups, ALPHA),
            f"gcfcp_delta{DELTA:g}": GCFCP(groups, ALPHA, DELTA)}
    fit_ms, predict_us, summarize_ms = {}, {}, {}
    for name, c in cals.items():
        t_sum, summaries = _median_time(
            lambda c=c: [c.summarize(cal_scores[pooled_slice], cal_pred[pooled_slice], pi_k=1.0 / K, n_clients=K)
                         for pooled_slice in _slices(n_k)], repeats)
        summarize_ms[name] = t_sum * 1e3
        t_fit, _ = _median_time(lambda c=c, s=summaries: c.fit(s), repeats)
        fit_ms[name] = t_fit * 1e3
        t_pred, _ = _median_time(lambda c=c: c.predict(test_smat, test_pred), repeats)
        predict_us[name] = t_pred / n_test * 1e6
    gc = cals["centralized_gcfcp"]
    thr_cmp = gc.thresholds_for(test_pred)
    t_cmp, _ = _median_time(lambda: test_smat <= thr_cmp[:, None], repeats)
    atom_thr = {name: {int(k): float(v) for k, v in c.thresholds.items()} for name, c in cals.items()}
    certified = {name: len(c._solver.certificates) if c._solver is not None else 0 for name, c in cals.items()}
    exact_us = {name: fit_ms[name] * 1e3 / n_test + predict_us[name] for name in cals}
    log(f"exact engine (median of {repeats}): " + "; ".join(
        f"{name} fit {fit_ms[name]:.3f} ms, predict {predict_us[name]:.4f} us/pt" for name in cals))
    log(f"  atoms (key: S*) centralized GC-FCP: {atom_thr['centralized_gcfcp']}")
    log(f"  comparison only (per-point thresholds given): {t_cmp / n_test * 1e6:.4f} us/pt")

    # ---------------- the paper's App. D bisection, per distinct test point
    sub_rng = np.random.default_rng([seed, 2])
    phi_cal = groups.membership(cal_pred).astype(float)
    appd = {"points": 0}
    disagreements_appd = disagreements_appd_coarse = None
    appd_ms = None
    if appd_points > 0:
        sub = sub_rng.choice(n_test, size=min(appd_points, n_test), replace=False)
        phi_sub = groups.membership(test_pred[sub])
        keys_sub = pattern_keys(phi_sub)
        exact_sets = gc.predict(test_smat[sub], test_pred[sub])
        times, coarse, fine, details, lp_coarse, lp_fine = [], [], [], [], [], []
        dis_fine = dis_coarse = 0
        for j, i in enumerate(sub.tolist()):
            with _count_calls(reference, "appd_test_dual") as calls:
                t0 = time.perf_counter()
                t_coarse = appd_threshold(cal_scores, lam_per_point, phi_cal, phi_sub[j].astype(float), test_weight,
                                          ALPHA, tol=APPD_TIMING_TOL)
                times.append(time.perf_counter() - t0)
            lp_coarse.append(calls[0])
            with _count_calls(reference, "appd_test_dual") as calls:
                t_fine = appd_threshold(cal_scores, lam_per_point, phi_cal, phi_sub[j].astype(float), test_weight,
                                        ALPHA, tol=APPD_AGREEMENT_TOL)
            lp_fine.append(calls[0])
            coarse.append(t_coarse)
            fine.append(t_fine)
            s_star = atom_thr["centralized_gcfcp"][int(keys_sub[j])]
            set_fine = test_smat[i] <= t_fine
            set_coarse = test_smat[i] <= t_coarse
            if not np.array_equal(set_fine, exact_sets[j]):
                dis_fine += 1
                differ = np.flatnonzero(set_fine != exact_sets[j])
                details.append({"test_index": int(test[i]), "atom_key": int(keys_sub[j]), "s_star_exact": s_star,
                                "appd_threshold_1e-10": t_fine, "labels_differing": differ.tolist(),
                                "scores_differing": test_smat[i][differ].tolist()})
            dis_coarse += int(not np.array_equal(set_coarse, exact_sets[j]))
        diffs = [abs(f - atom_thr["centralized_gcfcp"][int(k)]) for f, k in zip(fine, keys_sub)
                 if math.isfinite(f) and math.isfinite(atom_thr["centralized_gcfcp"][int(k)])]
        appd_ms = statistics.median(times) * 1e3
        disagreements_appd, disagreements_appd_coarse = dis_fine, dis_coarse
        appd = {
            "points": int(sub.size),
            "atom_counts": {str(k): int(v) for k, v in zip(*np.unique(keys_sub, return_counts=True))},
            "ms_per_point_mean": statistics.fmean(times) * 1e3,
            "lp_solves_per_point_tol_1e-3": statistics.median(lp_coarse),
            "lp_solves_per_point_tol_1e-10": statistics.median(lp_fine),
            "ms_per_lp_solve": statistics.median(times) * 1e3 / max(statistics.median(lp_coarse), 1),
            "bracket": "appd_threshold default: [min - 4(d+1)(range+1), max + 4(d+1)(range+1)], HiGHS tolerances 1e-10",
            "max_abs_threshold_diff_1e-10": max(diffs) if diffs else None,
            "max_abs_threshold_diff_1e-3": max(
                (abs(c - atom_thr["centralized_gcfcp"][int(k)]) for c, k in zip(coarse, keys_sub) if math.isfinite(c)),
                default=None),
            "disagreement_details_1e-10": details,
        }
        log(f"App. D bisection (HiGHS), {sub.size} distinct test points: {appd_ms:.1f} ms/pt (median) at tol "
            f"{APPD_TIMING_TOL:g} ({appd['lp_solves_per_point_tol_1e-3']:g} LP solves/pt, "
            f"{appd['ms_per_lp_solve']:.1f} ms each); disagreements with the exact engine: {dis_fine} at tol {APPD_AGREEMENT_TOL:g}, "
            f"{dis_coarse} at tol {APPD_TIMING_TOL:g}; max |S*_AppD(1e-10) - S*| = {appd['max_abs_threshold_diff_1e-10']}")
        for d in details:
            log(f"  DISAGREEMENT: {d}")

    # ---------------- conditionalconformal on CondCP's problem
    cc_res: dict = {"mode": None}
    condconf_ms = disagreements_cc = None
    if condconf_mode != "off":
        m = condconf_points
        if m is None:
            m = 100
        sub_c = sub_rng.choice(n_test, size=min(m, n_test), replace=False)
        phi_sub_c = groups.membership(test_pred[sub_c]).astype(float)
        if condconf_python:
            cc_res = _condconf_subprocess(condconf_python, phi_cal, cal_scores, phi_sub_c, ALPHA, condconf_mode)
        else:
            cc_res = condconf_run(phi_cal, cal_scores, phi_sub_c, ALPHA, condconf_mode)
        if "error" in cc_res:
            log(f"conditionalconformal: not measured ({cc_res['error']})")
        else:
            ours = cals["condcp"].predict(test_smat[sub_c], test_pred[sub_c])
            cut = np.asarray(cc_res["cutoffs"], dtype=float)
            theirs = test_smat[sub_c] <= cut[:, None]
            disagreements_cc = int(np.sum(np.any(theirs != ours, axis=1)))
            condconf_ms = statistics.median(cc_res["times_s"]) * 1e3
            thr_ours = cals["condcp"].thresholds_for(test_pred[sub_c])
            fin = np.isfinite(cut) & np.isfinite(thr_ours)
            cc_res["max_abs_threshold_diff"] = float(np.max(np.abs(cut[fin] - thr_ours[fin]))) if fin.any() else None
            cc_res["points"] = int(sub_c.size)
            log(f"conditionalconformal {cc_res['mode']} mode (numpy {cc_res['numpy']}), {sub_c.size} test points: "
                f"{condconf_ms:.3f} ms/pt (median; setup {cc_res['setup_ms']:.1f} ms, first point "
                f"{cc_res['times_s'][0] * 1e3:.1f} ms"
                f"{' incl. its calibration LP, cached for later points' if cc_res['mode'] == 'exact' else ''}); "
                f"disagreements with CondCP: "
                f"{disagreements_cc}; max |cutoff - S*| = {cc_res['max_abs_threshold_diff']:.3g}")
        if cc_res.get("note"):
            log(f"  note: {cc_res['note'].strip()}")

    # ---------------- digests
    dg = digest_benchmark(digest_n, seed, max(1, min(repeats, 5)))
    ratio = (dg["fastdigest_build_ms"] / dg["digest_build_ms"]) if dg["fastdigest_build_ms"] else None
    log(f"digest build, n={digest_n:g}, delta={DELTA:g}: ours {dg['digest_build_ms']:.1f} ms unit weights "
        f"({dg['digest_clusters']} clusters), {dg['digest_build_weighted_ms']:.1f} ms float weights")
    if dg["fastdigest_build_ms"] is not None:
        log(f"  fastdigest {dg['fastdigest_build_ms']:.1f} ms ({dg['fastdigest_centroids']} centroids), "
            f"{dg['fastdigest_build_ms_max_centroids_250']:.1f} ms (max_centroids=250); "
            f"fastdigest/ours = {ratio:.2f}x (unit), "
            f"{dg['fastdigest_build_ms'] / dg['digest_build_weighted_ms']:.2f}x vs our weighted build")
    else:
        log(f"  fastdigest: not measured ({dg['fastdigest_note']})")

    speedup_appd = appd_ms * 1e3 / exact_us["centralized_gcfcp"] if appd_ms is not None else None
    speedup_cc = condconf_ms * 1e3 / exact_us["condcp"] if condconf_ms is not None else None
    result = {
        "calibrate_ms": _round(fit_ms["centralized_gcfcp"]),
        "predict_us_per_point": _round(predict_us["centralized_gcfcp"]),
        "appd_ms_per_point": _round(appd_ms),
        "speedup_vs_appd": _round(speedup_appd, 4),
        "condconf_ms_per_point": _round(condconf_ms),
        "speedup_vs_condconf": _round(speedup_cc, 4),
        "disagreements_vs_appd": disagreements_appd,
        "disagreements_vs_condconf": disagreements_cc,
        "digest_build_ms_1e6": _round(dg["digest_build_ms"]) if digest_n == 1_000_000 else None,
        "fastdigest_build_ms_1e6": _round(dg["fastdigest_build_ms"]) if digest_n == 1_000_000 else None,
        # ---- extras
        "data_source": source,
        "synthetic": source.startswith("synthetic"),
        "n_cal": n_cal,
        "n_test": n_test,
        "n_per_client": n_k,
        "groups": GROUPS,
        "alpha": ALPHA,
        "seed": seed,
        "repeats": repeats,
        "calibrate_what": "CentralizedGCFCP.fit on the clients' raw summaries (weights lambda_k): S* for every atom",
        "calibrate_condcp_ms": _round(fit_ms["condcp"]),
        f"calibrate_gcfcp_delta{DELTA:g}_ms": _round(fit_ms[f"gcfcp_delta{DELTA:g}"]),
        "client_summarize_ms_all_clients": {k: _round(v) for k, v in summarize_ms.items()},
        "predict_us_per_point_by_method": {k: _round(v) for k, v in predict_us.items()},
        "predict_compare_only_us_per_point": _round(t_cmp / n_test * 1e6),
        "exact_us_per_point": {k: _round(v) for k, v in exact_us.items()},
        "speedup_definition": "reference time per test point / ((calibrate + predict all n_test points) / n_test) of "
        "the exact engine on the same problem: centralized GC-FCP for App. D, CondCP for conditionalconformal",
        "atom_thresholds": atom_thr,
        "certified_atoms": certified,
        "appd_timing_tolerance": APPD_TIMING_TOL,
        "appd_agreement_tolerance": APPD_AGREEMENT_TOL,
        "disagreements_vs_appd_tol_1e-3": disagreements_appd_coarse,
        "appd": appd,
        "condconf_mode": cc_res.get("mode"),
        "condconf": {k: v for k, v in cc_res.items() if k not in ("cutoffs", "times_s")},
        "digest": dg,
        "digest_build_weighted_ms_1e6": _round(dg["digest_build_weighted_ms"]) if digest_n == 1_000_000 else None,
        "fastdigest_over_ours": _round(ratio, 4),
        "machine": machine_info(),
    }
    result["summary"] = summary_line(result)
    return result


@contextlib.contextmanager
def _count_calls(module: Any, name: str):
    """Temporarily wrap ``module.name`` to count its calls (yields a one-element list holding the count)."""
    original = getattr(module, name)
    count = [0]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return original(*args, **kwargs)

    setattr(module, name, wrapped)
    try:
        yield count
    finally:
        setattr(module, name, original)


def _slices(n_k: Sequence[int]) -> list[slice]:
    ends = np.cumsum([0, *n_k]).tolist()
    return [slice(a, b) for a, b in zip(ends[:-1], ends[1:])]


def summary_line(r: dict) -> str:
    def f(x, fmt):
        return "n/a" if x is None else format(x, fmt)

    appd = "App.D n/a" if r["appd_ms_per_point"] is None else (
        f"App.D {r['appd_ms_per_point']:.0f} ms/pt (x{r['speedup_vs_appd']:.0f})")
    cc = "condconf n/a" if r["condconf_ms_per_point"] is None else (
        f"condconf[{r['condconf_mode']}] {r['condconf_ms_per_point']:.2f} ms/pt (x{r['speedup_vs_condconf']:.0f})")
    return (f"calibrate {f(r['calibrate_ms'], '.2f')} ms | predict {f(r['predict_us_per_point'], '.3f')} us/pt | "
            f"{appd} | {cc} | disagreements {f(r['disagreements_vs_appd'], 'd')}/"
            f"{f(r['disagreements_vs_condconf'], 'd')} | digest 1e6 {f(r['digest_build_ms_1e6'], '.0f')} ms "
            f"(fastdigest {f(r['fastdigest_build_ms_1e6'], '.0f')} ms)").replace("n/a ms", "n/a")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--condconf-worker"]:
        _condconf_worker(argv[1], argv[2])
        return 0
    ap = argparse.ArgumentParser(prog="python -m simulations.benchmark", description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, default=None, help="write the results JSON here")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="folder holding logits/cifar10_resnet56_test_logits.npz (default: $FLWR_GCFCP_DATA or ../shared/data)")
    ap.add_argument("--appd-points", type=int, default=20, help="test points for the App. D bisection (0 = skip)")
    ap.add_argument("--condconf-points", type=int, default=None, help="test points for conditionalconformal (default 100)")
    ap.add_argument("--condconf-mode", choices=("auto", "exact", "bisection", "off"), default="auto")
    ap.add_argument("--condconf-python", default=None,
                    help="interpreter to run conditionalconformal in (e.g. a numpy<2 venv for its exact mode)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-cal", type=int, default=5000)
    ap.add_argument("--n-test", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--digest-n", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    for name in ("appd_points", "n_cal", "n_test", "repeats", "digest_n"):
        v = getattr(args, name)
        if v < (0 if name == "appd_points" else 1):
            ap.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'appd_points' else 1}, got {v}")
    command = "python -m simulations.benchmark " + " ".join(shlex.quote(a) for a in argv)
    print(f"command: {command}")
    result = run_benchmark(
        data_dir=args.data_dir, appd_points=args.appd_points, condconf_points=args.condconf_points, seed=args.seed,
        n_cal=args.n_cal, n_test=args.n_test, repeats=args.repeats, digest_n=args.digest_n,
        condconf_mode=args.condconf_mode, condconf_python=args.condconf_python,
    )
    result["command"] = command
    print(f"machine: {result['machine']}")
    print(f"tolerances: App. D timed at {APPD_TIMING_TOL:g}, agreement checked at {APPD_AGREEMENT_TOL:g}; "
          f"conditionalconformal mode: {result['condconf_mode']}")
    print("speedups: " + ", ".join(
        f"{k}={result[k]}" for k in ("speedup_vs_appd", "speedup_vs_condconf")))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_jsonable(result), indent=2, sort_keys=False) + "\n")
        print(f"wrote {args.json}")
    print(result["summary"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
