"""Speed and exactness benchmark of the exact per-atom engine on the paper's CIFAR-10 setting (issue 2, item 7).

Usage::

    python -m simulations.benchmark [--json PATH] [--data-dir DIR] [--appd-points N] [--condconf-points N]
                                    [--seed S] [--condconf-mode auto|exact|bisection|off] [--condconf-python PY]
                                    [--families random|none] [--n-families N] [--families-check N]
                                    [--big-n N] [--n-clients N] [--e2e-n N,N,...]
                                    [--cross-atoms N] [--cross-reference-atoms N]

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

Issue 10 figures (each a top-level JSON key; details under ``minimal_reference``, ``random_families``, ``scale``):

* ``engine_over_minimal_reference`` (``_condcp``) — the exact engine (``AtomSolver``, all atoms, certificates
  checked) over :func:`minimal_chain_thresholds`, a minimal sort-and-search for one-relation-free chains (the
  CIFAR-10 groups), on identical inputs; best of interleaved repeats (the machine is shared).
* ``random_families_{condcp,gcfcp}_fit_ms_{median,max}`` — ``--families random --n-families N`` seeded random
  overlapping label-set families of 3-8 groups, fit of all atoms (CondCP, and centralized GC-FCP with the clients'
  λ_k weights), best of ``--repeats`` per family; ``random_families_appd_disagreements`` over every threshold of the first ``--families-check``
  families against the App. D dual LP (HiGHS) at S* ± 1e-6.
* ``condcp_1e6_fit_ms`` — CondCP on ``--big-n`` points resampled from the CIFAR-10 outputs (jittered by 1e-9 so
  that scores stay distinct; paper's groups);
  ``server_1000_clients_merge_fit_ms`` — GC-FCP server merge + fit of ``--n-clients`` clients' δ = 250 digests of
  those points.
* ``gcfcp_over_condcp_end_to_end`` — (every client's digests + the server's merge and fit) of GC-FCP δ = 250 over
  (every client's summary + the fit) of CondCP on the same split: all the work, each piece best of interleaved
  repeats; ``gcfcp_over_condcp_critical_path`` — the same with only the slowest client (clients run in parallel);
  ``end_to_end_scaling`` — both at the ``--e2e-n`` calibration sizes (the CIFAR-10 outputs resampled with a 1e-9
  jitter so that scores stay distinct, the same five clients by true class). At n = 5000 the fit is mostly work that does not grow with n (the exact solves per
  atom), which both pay; compression pays once sorting and scanning the raw points cost more than the clients'
  digests and the merge (see the scaling rows).

Many-atom families (``cross_families``; the largest one's fit times are top-level keys
``cross_families_largest_*``): the predicted class crossed with seeded random attributes (a 2- to 5-valued one and
up to 3 binary ones; one group per class and per attribute value: about 20, 40, 120 and 400 atoms, up to
``--cross-atoms``), fit of all atoms for CondCP's and centralized GC-FCP's weights; up to ``--cross-reference-atoms``
atoms also with the engine's scalar loop in the same process (identical thresholds, time ratio).

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
from fractions import Fraction
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
#: Resampled scores get U(0, this) added: without it n >> 10,000 draws of 10,000 outputs repeat every score ~n/1e4
#: times, and both the solver (ties summed) and the digests would see far fewer distinct values than real data.
RESAMPLE_JITTER = 1e-9


# ---------------------------------------------------------------------------------------------------- helpers
def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time (seconds) of ``fn()`` over ``repeats`` calls, and the last result."""
    times, out = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _interleaved_min(fns: Sequence[Callable[[], Any]], repeats: int) -> tuple[list[float], list[Any]]:
    """Best wall time (seconds) of each ``fn`` over ``repeats`` rounds run in turn (ratios robust to shared CPUs)."""
    best, outs = [math.inf] * len(fns), [None] * len(fns)
    for _ in range(max(1, repeats)):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[i] = fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best, outs


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


# ---------------------------------------------------------------------------------------- minimal reference (speed floor)
def minimal_chain_thresholds(values: np.ndarray, weights: np.ndarray, atom_index: np.ndarray, patterns: np.ndarray,
                             alpha: float, test_weight: int) -> dict[int, float]:
    """Minimal sort-and-search S* for families with a one-dimensional left null space of ±1 entries (the paper's
    CIFAR-10 chain): sort, cumulative integer weights, one monotone integer search per atom, float sums.

    The speed floor for the structured families (ALGORITHMS.md §9); no certificate, no other families. Integer
    weights only. Returns ``{row of patterns: S*}`` for the atoms with data.
    """
    from flwr_gcfcp.core.solver import left_null_space

    frac = Fraction(str(alpha))
    p, q = frac.numerator, frac.denominator
    by_value = np.argsort(values)
    order = by_value[np.argsort(atom_index[by_value], kind="stable")]  # by atom, then by score
    idx, v, w = atom_index[order], values[order], weights[order]
    cuts = np.flatnonzero(np.diff(idx)) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, idx.size]
    atoms = idx[starts]
    vals = [v[s:e] for s, e in zip(starts, ends)]
    cums = [np.cumsum(w[s:e]) * q for s, e in zip(starts, ends)]
    basis = left_null_space(patterns[atoms].astype(np.int64))
    if len(basis) != 1 or any(abs(x) != 1 for x in basis[0]):
        raise ValueError("minimal reference: needs a one-dimensional left null space with entries +-1")
    sgn = basis[0]
    m = len(atoms)
    tops = [int(c[-1]) for c in cums]
    out = {}

    def interval(b: int, c: int) -> tuple[float, float]:
        """Fitted values of atom b compatible with level c (q-weight below <= c <= q-weight at or below)."""
        cb, vb = cums[b], vals[b]
        if c == 0:
            return -math.inf, float(vb[0])
        if c == tops[b]:
            return float(vb[-1]), math.inf
        j = int(np.searchsorted(cb, c, side="left"))
        return float(vb[j]), float(vb[j + 1] if cb[j] == c else vb[j])

    for a in range(m):
        lev = [(q - p) * (tops[b] // q + (test_weight if b == a else 0)) for b in range(m)]
        zlo, zhi = -math.inf, math.inf
        for b in range(m):  # 0 <= lev_b - s_b z <= T_b
            e1, e2 = (lev[b] - tops[b]) * sgn[b], lev[b] * sgn[b]
            zlo, zhi = max(zlo, min(e1, e2)), min(zhi, max(e1, e2))
        if zlo > zhi:
            out[int(atoms[a])] = math.inf
            continue

        def y_low(z: int) -> float:  # min of Σ s_b θ_b over the intervals: non-increasing in z
            total = 0.0
            for b in range(m):
                lo_b, hi_b = interval(b, lev[b] - sgn[b] * z)
                total += lo_b if sgn[b] > 0 else -hi_b
            return total

        lo, hi = int(zlo), int(zhi)
        if y_low(hi) > 0:
            out[int(atoms[a])] = math.inf
            continue
        while lo < hi:  # smallest z with y_low(z) <= 0
            mid = (lo + hi) // 2
            if y_low(mid) <= 0:
                hi = mid
            else:
                lo = mid + 1
        # lowest θ_a with θ_b in their intervals and Σ s_b θ_b = 0 (any optimal z gives the same optimal θ set)
        rest_lo = rest_hi = 0.0
        for b in range(m):
            if b != a:
                lo_b, hi_b = interval(b, lev[b] - sgn[b] * lo)
                rest_lo, rest_hi = (rest_lo + lo_b, rest_hi + hi_b) if sgn[b] > 0 else (rest_lo - hi_b, rest_hi - lo_b)
        own_lo = interval(a, lev[a] - sgn[a] * lo)[0]
        out[int(atoms[a])] = max(own_lo, -rest_hi if sgn[a] > 0 else rest_lo)
    return out


# ------------------------------------------------------------------------------------------------ end to end
def end_to_end_benchmark(scores: np.ndarray, pred: np.ndarray, n_k: Sequence[int], repeats: int) -> dict:
    """GC-FCP δ = 250 against CondCP from the clients' summaries to the server's thresholds (all atoms).

    ``scores``/``pred`` hold the clients' calibration points back to back (``n_k`` each). Every client's
    ``summarize`` and each server ``fit`` are timed on their own, interleaved, best of ``repeats``: the total is
    every client plus the server (all the work, as one machine would do it), the critical path the slowest client
    plus the server (the clients of a federation work at the same time).
    """
    from flwr_gcfcp.core.groups import parse_groups
    from flwr_gcfcp.methods import GCFCP, CondCP

    groups = parse_groups(GROUPS, n_labels=N_LABELS)
    cals = {"gcfcp": GCFCP(groups, ALPHA, DELTA), "condcp": CondCP(groups, ALPHA)}
    K = len(n_k)
    fns, summaries = [], {}
    for name, c in cals.items():
        summaries[name] = [c.summarize(scores[sl], pred[sl], pi_k=1.0 / K, n_clients=K) for sl in _slices(n_k)]
        fns += [lambda c=c, sl=sl: c.summarize(scores[sl], pred[sl], pi_k=1.0 / K, n_clients=K) for sl in _slices(n_k)]
        fns.append(lambda c=c, s=summaries[name]: c.fit(s))
    best, _ = _interleaved_min(fns, repeats)
    out: dict = {"n_per_client": [int(n) for n in n_k]}
    for i, name in enumerate(cals):
        part = [t * 1e3 for t in best[i * (K + 1) : (i + 1) * (K + 1)]]
        clients, server = part[:K], part[K]
        out.update({f"{name}_clients_ms": clients, f"{name}_server_ms": server, f"{name}_total_ms": sum(clients) + server,
                    f"{name}_critical_path_ms": max(clients) + server})
    out["total_ratio"] = out["gcfcp_total_ms"] / out["condcp_total_ms"]
    out["critical_path_ratio"] = out["gcfcp_critical_path_ms"] / out["condcp_critical_path_ms"]
    out["gcfcp_coreset"] = int(cals["gcfcp"].coreset_size)
    return out


# ------------------------------------------------------------------------------------ random families and scale
def direction_relations(patterns: np.ndarray) -> int:
    """Relations between the direction classes of the left null space's rows (the old exact path took <= 1)."""
    from flwr_gcfcp.core.solver import left_null_space

    pats = np.unique(patterns[patterns.any(axis=1)], axis=0).astype(np.int64)
    basis = left_null_space(pats)
    rows = set()
    for pos in range(len(pats)):
        row = [vec[pos] for vec in basis]
        if any(row):
            g = math.gcd(*row)
            row = [x // g for x in row]
            rows.add(tuple(-x for x in row) if next(x for x in row if x) < 0 else tuple(row))
    return len(rows) - len(basis) if basis else 0


def random_label_families(n_families: int, seed: int, n_labels: int = N_LABELS) -> list[str]:
    """Seeded random overlapping label-set families of 3-8 groups (2-7 labels each, every label covered)."""
    rng = np.random.default_rng([seed, 3])
    out = []
    for _ in range(n_families):
        d = int(rng.integers(3, 9))
        groups = [set(rng.choice(n_labels, size=int(rng.integers(2, 8)), replace=False).tolist()) for _ in range(d)]
        for lab in set(range(n_labels)) - set().union(*groups):
            groups[int(rng.integers(0, d))].add(lab)
        out.append(";".join(",".join(str(x) for x in sorted(g)) for g in groups))
    return out


def families_benchmark(cal_scores, cal_pred, n_k, n_families: int, seed: int, repeats: int, check: int,
                       log: Callable[[str], None] = print) -> dict:
    """Fit of all atoms for random label-set families: CondCP (equal weights) and centralized GC-FCP (λ_k).

    Per family the best of ``repeats`` fits (the machine is shared); across families the median and the maximum.

    For the first ``check`` families every atom's S* is checked against the App. D dual LP (HiGHS): the test dual
    must be below (1 - α) w_test at S* - 1e-6 and not at S* + 1e-6.
    """
    from flwr_gcfcp.core.groups import keys_to_patterns, parse_groups
    from flwr_gcfcp.core.quantiles import client_lambdas
    from flwr_gcfcp.core.reference import appd_test_dual
    from flwr_gcfcp.methods import CentralizedGCFCP, CondCP

    K = len(n_k)
    lams = client_lambdas(n_k)
    lam_per_point = np.concatenate([np.full(n, float(l)) for n, l in zip(n_k, lams)])
    rows, disagreements, checked = [], 0, 0
    for f, text in enumerate(random_label_families(n_families, seed)):
        groups = parse_groups(text, n_labels=N_LABELS)
        patterns = groups.membership(np.arange(N_LABELS))
        row = {"groups": text, "d": groups.n_groups, "atoms": int(len(np.unique(patterns, axis=0))),
               "relations": direction_relations(patterns)}
        for name, cal in (("condcp", CondCP(groups, ALPHA)), ("centralized_gcfcp", CentralizedGCFCP(groups, ALPHA))):
            summaries = [cal.summarize(cal_scores[sl], cal_pred[sl], pi_k=1.0 / K, n_clients=K) for sl in _slices(n_k)]
            (t,), _ = _interleaved_min([lambda cal=cal, s=summaries: cal.fit(s)], repeats)
            row[f"{name}_fit_ms"] = t * 1e3
            row[f"{name}_certified_atoms"] = len(cal._solver.certificates)
            if f < check:
                weights, tw = (np.ones(cal_scores.size), 1.0) if name == "condcp" else (lam_per_point, float(sum(lams)))
                phi = groups.membership(cal_pred).astype(float)
                cap = (1 - ALPHA) * tw
                for key, s_star in cal.thresholds.items():
                    target = keys_to_patterns([int(key)], groups.n_groups)[0].astype(float)
                    dual = lambda s: appd_test_dual(cal_scores, weights, phi, target, tw, ALPHA, s)  # noqa: E731
                    if math.isinf(s_star):
                        disagreements += not dual(float(cal_scores.max()) + 50.0) < cap * (1 - 1e-7)
                    else:
                        disagreements += not dual(s_star - 1e-6) < cap * (1 - 1e-7)
                        disagreements += not dual(s_star + 1e-6) > cap * (1 - 1e-7)
                    checked += 1
        rows.append(row)
        log(f"  family {f:2d} d={row['d']} atoms={row['atoms']} relations={row['relations']}: "
            f"CondCP {row['condcp_fit_ms']:.2f} ms, centralized GC-FCP {row['centralized_gcfcp_fit_ms']:.2f} ms")
    out = {"n_families": n_families, "families": rows, "appd_checked_thresholds": checked,
           "appd_disagreements": disagreements}
    for name in ("condcp", "centralized_gcfcp"):
        ts = [r[f"{name}_fit_ms"] for r in rows]
        out[f"{name}_fit_ms_median"] = statistics.median(ts) if ts else None
        out[f"{name}_fit_ms_max"] = max(ts) if ts else None
    out["relations_histogram"] = {str(k): sum(r["relations"] == k for r in rows) for k in sorted({r["relations"] for r in rows})}
    return out


#: (values of a categorical attribute, binary attributes) of the class x attribute families: about 20, 40, 120, 400 atoms
CROSS_FAMILIES = ((2, 0), (4, 0), (3, 2), (5, 3))


def cross_families_benchmark(cal_scores, cal_pred, n_k, seed: int, repeats: int, max_atoms: int, reference_atoms: int,
                             log: Callable[[str], None] = print) -> list[dict]:
    """Predicted class x seeded random attributes (one group per class, per attribute value): many atoms, many relations.

    Fit of all atoms by the exact engine (CondCP's equal weights and centralized GC-FCP's λ_k), best of ``repeats``
    (one run from 100 atoms on), against the scalar loop of the same engine (``DualSimplex.wide_from`` out of reach)
    in the same process for families of at most ``reference_atoms`` atoms: same thresholds, and the time ratio.
    """
    from flwr_gcfcp.core.groups import keys_to_patterns, pattern_keys, unique_keys
    from flwr_gcfcp.core.simplex import DualSimplex
    from flwr_gcfcp.core.solver import AtomSolver
    from flwr_gcfcp.methods.base import _client_integer_weights, _repeat_weights

    n = cal_scores.size
    lam_ints, tw_lam = _client_integer_weights(list(n_k), None)
    weightings = {"condcp": (np.ones(n, dtype=np.int64), 1), "centralized_gcfcp": (_repeat_weights(lam_ints, list(n_k)), tw_lam)}
    rows = []
    for n_values, n_binary in CROSS_FAMILIES:
        rng = np.random.default_rng([seed, 5, n_values, n_binary])
        value = rng.integers(0, n_values, n)
        cols = [cal_pred == c for c in range(N_LABELS)] + [value == v for v in range(n_values)]
        cols += [rng.integers(0, 2, n) == 1 for _ in range(n_binary)]
        phi = np.stack(cols, axis=1)
        uniq, index, _ = unique_keys(pattern_keys(phi))
        patterns = keys_to_patterns(uniq, phi.shape[1])
        if len(patterns) > max_atoms:
            continue
        row: dict[str, Any] = {"groups": int(phi.shape[1]), "atoms": int(len(patterns)),
                               "family": f"class x {n_values}-valued attribute" + (f" x {n_binary} binary" if n_binary else "")}
        reps = 1 if len(patterns) >= 100 else repeats
        for name, (weights, tw) in weightings.items():
            def fit(weights=weights, tw=tw):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # small atoms are the point here
                    solver = AtomSolver(cal_scores, weights, index, patterns, ALPHA, tw)
                    return solver.thresholds(patterns), len(solver.certificates)
            (t,), ((thr, certified),) = _interleaved_min([fit], reps)
            row[f"{name}_fit_ms"] = t * 1e3
            row[f"{name}_certified_atoms"] = certified
            if len(patterns) <= reference_atoms:
                wide_from = DualSimplex.wide_from
                DualSimplex.wide_from = 10**9
                try:
                    (t_ref,), ((ref, _),) = _interleaved_min([fit], reps)
                finally:
                    DualSimplex.wide_from = wide_from
                row[f"{name}_scalar_loop_ms"] = t_ref * 1e3
                row[f"{name}_speedup_over_scalar_loop"] = t_ref / t
                row[f"{name}_differences_from_scalar_loop"] = int(np.sum(thr != ref))
        rows.append(row)
        ref_text = "".join(
            f"; {name} scalar loop {row[f'{name}_scalar_loop_ms']:.0f} ms (x{row[f'{name}_speedup_over_scalar_loop']:.1f}, "
            f"{row[f'{name}_differences_from_scalar_loop']} differences)" for name in weightings if f"{name}_scalar_loop_ms" in row)
        log(f"  {row['family']}: {row['groups']} groups, {row['atoms']} atoms: CondCP {row['condcp_fit_ms']:.0f} ms, "
            f"centralized GC-FCP {row['centralized_gcfcp_fit_ms']:.0f} ms{ref_text}")
    return rows


def scale_benchmark(probs: np.ndarray, labels: np.ndarray, n_big: int, n_clients: int, seed: int, repeats: int,
                    log: Callable[[str], None] = print) -> dict:
    """CondCP at n = ``n_big`` (the CIFAR-10 outputs resampled with replacement, scores jittered by
    U(0, ``RESAMPLE_JITTER``) so that they are distinct, as n real scores would be) against the minimal reference, and
    a server merging ``n_clients`` clients' δ = 250 digests of those points and fitting GC-FCP."""
    from flwr_gcfcp.core.groups import keys_to_patterns, parse_groups
    from flwr_gcfcp.methods import GCFCP, CondCP

    rng = np.random.default_rng([seed, 4])
    pick = rng.integers(0, probs.shape[0], n_big)
    lab = labels[pick]
    pred = np.argmax(probs[pick], axis=1).astype(np.int64)
    scores = 1.0 - probs[pick, lab].astype(np.float64) + rng.uniform(0.0, RESAMPLE_JITTER, n_big)
    groups = parse_groups(GROUPS, n_labels=N_LABELS)
    cond = CondCP(groups, ALPHA)
    summary = [cond.summarize(scores, pred)]
    keys = summary[0].atom_keys
    uniq, index = np.unique(keys, return_inverse=True)
    pats = keys_to_patterns(uniq, groups.n_groups)
    ones = np.ones(n_big, dtype=np.int64)
    (t_fit, t_min), (_, ref) = _interleaved_min(
        [lambda: cond.fit(summary), lambda: minimal_chain_thresholds(scores, ones, index, pats, ALPHA, 1)], repeats)
    ref_dis = sum(not _close(ref[i], cond.thresholds[int(k)]) for i, k in enumerate(uniq.tolist()))
    out = {"n": n_big, "condcp_fit_ms": t_fit * 1e3, "minimal_reference_ms": t_min * 1e3,
           "condcp_over_minimal": t_fit / t_min, "minimal_reference_disagreements": ref_dis}
    log(f"n={n_big:g} CondCP on the CIFAR-10 groups: fit {t_fit * 1e3:.0f} ms; minimal sort-and-search "
        f"{t_min * 1e3:.0f} ms (x{t_fit / t_min:.2f}); threshold differences beyond 1e-12: {ref_dis}")
    if n_clients > 0:
        gc = GCFCP(groups, ALPHA, DELTA)
        parts = np.array_split(np.arange(n_big), n_clients)
        t_build, summaries = _median_time(
            lambda: [gc.summarize(scores[p], pred[p], pi_k=1.0 / n_clients, n_clients=n_clients) for p in parts],
            max(1, min(repeats, 2)))
        (t_server,), _ = _interleaved_min([lambda: gc.fit(summaries)], max(1, min(repeats, 3)))
        out.update(n_clients=n_clients, clients_build_ms_total=t_build * 1e3,
                   clients_build_ms_per_client=t_build * 1e3 / n_clients, server_merge_fit_ms=t_server * 1e3,
                   coreset_size=int(gc.coreset_size))
        log(f"{n_clients} clients x {n_big // n_clients} points, delta={DELTA:g}: server merge + fit "
            f"{t_server * 1e3:.0f} ms (coreset {gc.coreset_size} centroids); client digests "
            f"{t_build * 1e3 / n_clients:.2f} ms per client")
    return out


def _close(a: float, b: float) -> bool:
    return a == b or (math.isfinite(a) and math.isfinite(b) and abs(a - b) <= 1e-12 * max(1.0, abs(a)))


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
    families: str = "random",
    n_families: int = 20,
    families_check: int = 3,
    big_n: int = 1_000_000,
    n_clients: int = 1000,
    cross_atoms: int = 400,
    cross_reference_atoms: int = 120,
    e2e_ns: Sequence[int] = (20_000, 100_000, 500_000),
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

    # ---------------- the same problems against the minimal sort-and-search reference (speed floor)
    from flwr_gcfcp.core.groups import keys_to_patterns
    from flwr_gcfcp.core.solver import AtomSolver
    from flwr_gcfcp.methods.base import _client_integer_weights, _repeat_weights

    cal_keys = pattern_keys(groups.membership(cal_pred))
    uniq_keys, atom_idx = np.unique(cal_keys, return_inverse=True)
    atom_pats = keys_to_patterns(uniq_keys, groups.n_groups)
    lam_ints, tw_int = _client_integer_weights(n_k, None)
    minimal = {}
    for name, (wts, tw) in {"condcp": (np.ones(cal_scores.size, dtype=np.int64), 1),
                            "centralized_gcfcp": (np.asarray(_repeat_weights(lam_ints, n_k), dtype=np.int64), int(tw_int))}.items():
        (t_engine, t_ref), (thr, ref) = _interleaved_min(
            [lambda w=wts, t=tw: AtomSolver(cal_scores, w, atom_idx, atom_pats, ALPHA, t).thresholds(atom_pats),
             lambda w=wts, t=tw: minimal_chain_thresholds(cal_scores, w, atom_idx, atom_pats, ALPHA, t)], 3 * repeats)
        minimal[name] = {"engine_ms": t_engine * 1e3, "minimal_reference_ms": t_ref * 1e3, "ratio": t_engine / t_ref,
                         "disagreements_beyond_1e-12": sum(not _close(ref[i], float(thr[i])) for i in range(len(atom_pats)))}
        log(f"  {name}: exact engine {t_engine * 1e3:.2f} ms vs minimal sort-and-search {t_ref * 1e3:.2f} ms "
            f"(x{t_engine / t_ref:.2f}; {minimal[name]['disagreements_beyond_1e-12']} thresholds differ beyond 1e-12)")
    e2e = end_to_end_benchmark(cal_scores, cal_pred, n_k, 3 * repeats)
    log(f"  end to end (clients' summaries + server fit), GC-FCP delta={DELTA:g} / CondCP: total "
        f"{e2e['gcfcp_total_ms']:.2f} / {e2e['condcp_total_ms']:.2f} ms (x{e2e['total_ratio']:.2f}); critical path "
        f"(slowest client + server) {e2e['gcfcp_critical_path_ms']:.2f} / {e2e['condcp_critical_path_ms']:.2f} ms "
        f"(x{e2e['critical_path_ratio']:.2f})")
    scaling = []
    for n_big in e2e_ns:
        rng_e = np.random.default_rng([seed, 5, n_big])
        pick = rng_e.integers(0, n_all, n_big)  # the CIFAR-10 outputs resampled, clients by true class as above
        order = np.concatenate([pick[np.isin(labels[pick], cls)] for cls in CLIENT_CLASSES])
        sizes = [int(np.isin(labels[pick], cls).sum()) for cls in CLIENT_CLASSES]
        sizes = [n for n in sizes if n]
        jittered = smat[order, labels[order]] + rng_e.uniform(0.0, RESAMPLE_JITTER, order.size)
        row = end_to_end_benchmark(jittered, pred[order], sizes, max(2, repeats // 2))
        scaling.append({"n": n_big, **row})
        log(f"  end to end at n={n_big}: total x{row['total_ratio']:.2f} ({row['gcfcp_total_ms']:.1f} / "
            f"{row['condcp_total_ms']:.1f} ms), critical path x{row['critical_path_ratio']:.2f}; coreset "
            f"{row['gcfcp_coreset']} centroids")

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

    # ---------------- random families, n = 1e6, 1,000 clients
    fam = None
    if families == "random" and n_families > 0:
        log(f"random label-set families ({n_families}, seeded), fit of all atoms at n={n_cal}, median of {repeats}:")
        fam = families_benchmark(cal_scores, cal_pred, n_k, n_families, seed, repeats, families_check, log)
        log(f"  CondCP median {fam['condcp_fit_ms_median']:.2f} ms, max {fam['condcp_fit_ms_max']:.2f} ms; centralized "
            f"GC-FCP median {fam['centralized_gcfcp_fit_ms_median']:.2f} ms, max {fam['centralized_gcfcp_fit_ms_max']:.2f} ms; "
            f"relations {fam['relations_histogram']}; App. D disagreements {fam['appd_disagreements']} of "
            f"{fam['appd_checked_thresholds']} thresholds checked")
    cross = None
    if cross_atoms > 0:
        log(f"class x attribute families (seeded attributes), fit of all atoms at n={n_cal}; the engine's scalar loop "
            f"as the reference up to {cross_reference_atoms} atoms:")
        cross = cross_families_benchmark(cal_scores, cal_pred, n_k, seed, max(1, min(repeats, 3)), cross_atoms,
                                         cross_reference_atoms, log)
    scale = scale_benchmark(probs, labels, big_n, n_clients, seed, max(1, min(repeats, 3)), log) if big_n > 0 else None

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
        "engine_over_minimal_reference": _round(minimal["centralized_gcfcp"]["ratio"], 4),
        "engine_over_minimal_reference_condcp": _round(minimal["condcp"]["ratio"], 4),
        "random_families_condcp_fit_ms_median": _round(fam["condcp_fit_ms_median"]) if fam else None,
        "random_families_condcp_fit_ms_max": _round(fam["condcp_fit_ms_max"]) if fam else None,
        "random_families_gcfcp_fit_ms_median": _round(fam["centralized_gcfcp_fit_ms_median"]) if fam else None,
        "random_families_gcfcp_fit_ms_max": _round(fam["centralized_gcfcp_fit_ms_max"]) if fam else None,
        "random_families_appd_disagreements": fam["appd_disagreements"] if fam else None,
        "cross_families_largest_atoms": cross[-1]["atoms"] if cross else None,
        "cross_families_largest_condcp_fit_ms": _round(cross[-1]["condcp_fit_ms"]) if cross else None,
        "cross_families_largest_gcfcp_fit_ms": _round(cross[-1]["centralized_gcfcp_fit_ms"]) if cross else None,
        "condcp_1e6_fit_ms": _round(scale["condcp_fit_ms"]) if scale else None,
        "server_1000_clients_merge_fit_ms": _round(scale.get("server_merge_fit_ms")) if scale else None,
        "gcfcp_end_to_end_ms": _round(e2e["gcfcp_total_ms"]),
        "condcp_end_to_end_ms": _round(e2e["condcp_total_ms"]),
        "gcfcp_over_condcp_end_to_end": _round(e2e["total_ratio"], 4),
        "gcfcp_over_condcp_critical_path": _round(e2e["critical_path_ratio"], 4),
        "end_to_end": e2e,
        "end_to_end_scaling": scaling,
        # ---- extras
        "minimal_reference": minimal,
        "random_families": fam,
        "cross_families": cross,
        "scale": scale,
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
    fam = "families n/a" if r.get("random_families_condcp_fit_ms_median") is None else (
        f"random families CondCP {r['random_families_condcp_fit_ms_median']:.1f}/{r['random_families_condcp_fit_ms_max']:.1f} "
        f"ms, GC-FCP {r['random_families_gcfcp_fit_ms_median']:.1f}/{r['random_families_gcfcp_fit_ms_max']:.1f} ms "
        f"(median/max; App.D dis. {r['random_families_appd_disagreements']})")
    cross = "" if r.get("cross_families_largest_atoms") is None else (
        f" | class x attribute {r['cross_families_largest_atoms']} atoms CondCP "
        f"{r['cross_families_largest_condcp_fit_ms'] / 1e3:.2f} s, GC-FCP {r['cross_families_largest_gcfcp_fit_ms'] / 1e3:.2f} s")
    rows = r.get("end_to_end_scaling") or []
    scaling = ("; total/critical at n=" + ", ".join(
        f"{row['n']:g}: {row['total_ratio']:.2f}/{row['critical_path_ratio']:.2f}" for row in rows)) if rows else ""
    return (f"calibrate {f(r['calibrate_ms'], '.2f')} ms (x{f(r.get('engine_over_minimal_reference'), '.2f')} minimal"
            f", CondCP x{f(r.get('engine_over_minimal_reference_condcp'), '.2f')}) | "
            f"predict {f(r['predict_us_per_point'], '.3f')} us/pt | "
            f"{appd} | {cc} | disagreements {f(r['disagreements_vs_appd'], 'd')}/"
            f"{f(r['disagreements_vs_condconf'], 'd')} | {fam}{cross} | CondCP 1e6 {f(r.get('condcp_1e6_fit_ms'), '.0f')} ms | "
            f"1000 clients {f(r.get('server_1000_clients_merge_fit_ms'), '.0f')} ms | GC-FCP/CondCP e2e "
            f"{f(r.get('gcfcp_over_condcp_end_to_end'), '.2f')} (critical path "
            f"{f(r.get('gcfcp_over_condcp_critical_path'), '.2f')}){scaling} | digest 1e6 "
            f"{f(r['digest_build_ms_1e6'], '.0f')} ms "
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
    ap.add_argument("--families", choices=("random", "none"), default="random",
                    help="seeded random overlapping label-set families (3-8 groups) fitted with CondCP and GC-FCP weights")
    ap.add_argument("--n-families", type=int, default=20)
    ap.add_argument("--families-check", type=int, default=3, help="families whose every threshold App. D checks")
    ap.add_argument("--big-n", type=int, default=1_000_000, help="points for the CondCP scale run (0 = skip)")
    ap.add_argument("--n-clients", type=int, default=1000, help="clients' digests merged at the server (0 = skip)")
    ap.add_argument("--cross-atoms", type=int, default=400,
                    help="largest class x attribute family (atoms) to fit (0 = skip)")
    ap.add_argument("--cross-reference-atoms", type=int, default=120,
                    help="class x attribute families up to this many atoms also run the engine's scalar loop")
    ap.add_argument("--e2e-n", default="20000,100000,500000",
                    help="comma-separated calibration sizes for the end-to-end comparison beyond the split ('' = none)")
    args = ap.parse_args(argv)
    try:
        e2e_ns = [int(x) for x in args.e2e_n.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--e2e-n must be comma-separated integers, got {args.e2e_n!r}")
    if any(n < 10 for n in e2e_ns):
        ap.error(f"--e2e-n sizes must be >= 10, got {args.e2e_n!r}")
    for name in ("appd_points", "n_cal", "n_test", "repeats", "digest_n"):
        v = getattr(args, name)
        if v < (0 if name == "appd_points" else 1):
            ap.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'appd_points' else 1}, got {v}")
    command = "python -m simulations.benchmark " + " ".join(shlex.quote(a) for a in argv)
    print(f"command: {command}")
    result = run_benchmark(
        data_dir=args.data_dir, appd_points=args.appd_points, condconf_points=args.condconf_points, seed=args.seed,
        n_cal=args.n_cal, n_test=args.n_test, repeats=args.repeats, digest_n=args.digest_n,
        condconf_mode=args.condconf_mode, condconf_python=args.condconf_python, families=args.families,
        n_families=args.n_families, families_check=args.families_check, big_n=args.big_n, n_clients=args.n_clients,
        cross_atoms=args.cross_atoms, cross_reference_atoms=args.cross_reference_atoms,
        e2e_ns=e2e_ns,
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
