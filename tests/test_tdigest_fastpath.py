"""The greedy pass of the arcsine T-digest after its speed-up: bit-identical to the plain searchsorted loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flwr_gcfcp.core import tdigest
from flwr_gcfcp.core.tdigest import EDGE_MARGIN, build_digest, merge_digests


def _cluster_ends_plain(cumf: np.ndarray, total: float, delta: float) -> np.ndarray:
    """The construction as first written: one numpy searchsorted per cluster."""
    n = cumf.shape[0]
    theta = 2.0 * math.pi / delta
    if theta >= math.pi:
        return np.array([n - 1], dtype=np.int64)
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    sin2_half = math.sin(theta / 2.0) ** 2
    ends, start = [], 0
    while start < n:
        q_left = float(cumf[start - 1]) / total if start else 0.0
        if 2.0 * q_left - 1.0 >= cos_t:
            end = n - 1
        else:
            bound = q_left * cos_t + sin2_half + math.sqrt(max(q_left * (1.0 - q_left), 0.0)) * sin_t - EDGE_MARGIN
            end = max(int(cumf.searchsorted(bound * total, side="right")) - 1, start)
        ends.append(end)
        start = end + 1
    return np.asarray(ends, dtype=np.int64)


def _unit_starts_plain(n: int, delta: float) -> np.ndarray:
    ends = _cluster_ends_plain(np.arange(1.0, n + 1.0), float(n), delta)
    return np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)


def test_cluster_ends_match_the_plain_loop(monkeypatch):
    rng = np.random.default_rng(0)
    cases = []
    for trial in range(200):
        n = int(rng.integers(1, 3000))
        x = rng.random(n) if trial % 3 else np.round(rng.random(n), 2)
        w = None if trial % 2 else (rng.integers(1, 9, n) if trial % 4 == 1 else rng.random(n) + 0.01)
        cases.append((x, w, float(rng.choice([2.5, 25, 250, 2500]))))
    fast = []
    for x, w, delta in cases:
        d = build_digest(x, w, delta)
        fast.append((d, merge_digests([d, build_digest(x[::-1] * 0.5, None, delta)], delta)))
    monkeypatch.setattr(tdigest, "_cluster_ends", _cluster_ends_plain)
    monkeypatch.setattr(tdigest, "_unit_starts", _unit_starts_plain)
    for (x, w, delta), (d_fast, m_fast) in zip(cases, fast):
        d = build_digest(x, w, delta)
        m = merge_digests([d, build_digest(x[::-1] * 0.5, None, delta)], delta)
        for a, b in ((d_fast, d), (m_fast, m)):
            assert a.means.tobytes() == b.means.tobytes()
            assert np.asarray(a.weights).tolist() == np.asarray(b.weights).tolist()


def test_unit_weight_clusters_match_the_plain_loop():
    """Unit weights: one scalar bound per cluster (_unit_starts) gives the plain loop's clusters for every n, δ."""
    rng = np.random.default_rng(7)
    deltas = [0.5, 2.0, 2.0001, 3.0, 7.5, 25.0, 40.0, 250.0, 333.3, 2500.0, 1e5, 1e9, 1e17, 1e300]
    deltas += rng.uniform(2.0, 5000.0, 6).tolist()
    for delta in deltas:
        for n in list(range(1, 120)) + rng.integers(120, 40000, 12).tolist():
            assert np.array_equal(tdigest._unit_starts(n, delta), _unit_starts_plain(n, delta)), (n, delta)


@pytest.mark.parametrize("big", [False, True])
def test_merge_of_object_int_weights_is_unchanged(big):
    """Server merges carry exact Python-int weights (counts times a common integer λ scale), within int64 or not."""
    rng = np.random.default_rng(1)
    digests = []
    for k in range(30):
        d = build_digest(rng.random(int(rng.integers(1, 400))), None, 250)
        scale = int(rng.integers(1, 10**12)) * (10**15 if big else 1)
        digests.append(type(d)(means=d.means, weights=d.weights.astype(object) * scale, delta=250.0))
    digests.append(type(d)(means=d.means, weights=np.array([np.int64(3)] * d.n_clusters, dtype=object), delta=250.0))
    merged = merge_digests(digests, 250)
    means = np.concatenate([x.means for x in digests])
    weights = np.empty(means.size, dtype=object)
    weights[:] = [int(w) for x in digests for w in x.weights.tolist()]
    order = np.argsort(means, kind="stable")
    want_means, want_weights = tdigest._compress(means[order], weights[order], 250.0)
    assert merged.means.tobytes() == want_means.tobytes()
    assert merged.weights.dtype == object and all(type(w) is int for w in merged.weights.tolist())
    assert merged.weights.tolist() == want_weights.tolist()


# ---------------------------------------------------------------------------------- all atoms in one pass
def _random_scores(rng: np.random.Generator, n: int, kind: int) -> np.ndarray:
    if kind == 0:
        return rng.random(n)
    if kind == 1:  # many ties
        return np.round(rng.random(n), 1)
    if kind == 2:  # few distinct values, zeros of both signs, negatives
        return rng.choice([0.0, -0.0, 1.0, 0.5, -3.0], n)
    return rng.standard_normal(n) * 10.0 ** float(rng.integers(-6, 6))


def _per_atom_digests(scores: np.ndarray, keys: np.ndarray, delta: float):
    """The client side as first written: one build_digest per atom (scores + 0.0, as summarize_digests does)."""
    scores = scores + 0.0
    out = []
    for key in np.unique(keys).tolist():
        d = build_digest(scores[keys == key], None, delta)
        out.append((key, d.means, d.weights))
    return out


def test_summarize_digests_equals_build_digest_per_atom():
    """Many random clients (ties, one-point atoms, one to hundreds of atoms, any δ): identical atoms, means (bits)
    and counts to build_digest per atom."""
    from flwr_gcfcp.core.summaries import summarize_digests

    rng = np.random.default_rng(7)
    for trial in range(600):
        n = int(rng.integers(1, 2000))
        n_atoms = int(rng.choice([1, 2, 5, 30, 300, n]))  # n: mostly one-point atoms
        keys = rng.integers(0, n_atoms, n) * int(rng.integers(1, 10**6))
        scores = _random_scores(rng, n, trial % 4)
        delta = float(rng.choice([0.7, 2.0, 2.5, 3.0, 10.0, 25.0, 250.0, 2500.0, 1e9, rng.uniform(0.5, 500)]))
        got = summarize_digests(scores, keys, delta)
        want = _per_atom_digests(scores, keys, delta)
        assert got.atom_keys.tolist() == [k for k, _, _ in want]
        assert got.counts.dtype == np.int64 and got.n == n
        for (key, means, counts), (k2, m2, c2) in zip(got.atom_blocks(), want):
            assert means.tobytes() == m2.tobytes(), (trial, key)
            assert counts.tolist() == c2.tolist(), (trial, key)


def test_summarize_digests_edge_cases():
    from flwr_gcfcp.core.summaries import summarize_digests

    empty = summarize_digests(np.zeros(0), np.zeros(0, dtype=np.int64), 250)
    assert empty.atom_keys.size == 0 and empty.offsets.tolist() == [0] and empty.means.size == 0
    one = summarize_digests(np.array([-0.0, 3.0]), np.array([4, 9]), 250)  # one-point atoms
    assert one.atom_keys.tolist() == [4, 9] and one.counts.tolist() == [1, 1]
    assert one.means.tobytes() == np.array([0.0, 3.0]).tobytes()  # -0.0 is summarised as +0.0
    with pytest.raises(ValueError, match="scores must be finite"):
        summarize_digests(np.array([0.1, np.nan]), np.array([0, 0]), 250)
    with pytest.raises(ValueError, match="atom_keys"):
        summarize_digests(np.array([0.1, 0.2]), np.array([0]), 250)


def test_compress_sorted_segments_equals_merge_digests_per_atom():
    """The server merge for all atoms at once: the same means (bits) and integer weights as merge_digests per
    atom over the clients' digests in client order."""
    rng = np.random.default_rng(8)
    for trial in range(600):
        delta = float(rng.choice([1.0, 2.0, 3.0, 10.0, 25.0, 250.0, rng.uniform(0.5, 500)]))
        lams = [int(x) for x in rng.integers(1, 10 ** int(rng.integers(1, 12)), int(rng.integers(1, 8)))]
        per_atom, rows = {}, []
        for lam in lams:
            for atom in range(int(rng.integers(1, 20))):
                if rng.random() < 0.3:
                    continue
                m = int(rng.integers(1, 60))
                means = np.sort(_random_scores(rng, m, trial % 4) + 0.0)
                counts = rng.integers(1, 50, m)
                per_atom.setdefault(atom, []).append(tdigest.TDigest(means, counts.astype(object) * lam, delta))
                rows.append((atom, means, counts * lam))
        if not rows:
            continue
        keys = np.concatenate([np.full(r[1].size, r[0]) for r in rows])
        values = np.concatenate([r[1] for r in rows])
        weights = np.concatenate([r[2] for r in rows]).astype(np.int64)
        order = np.lexsort((values, keys))
        keys, values, weights = keys[order], values[order], weights[order]
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(keys)) + 1, [keys.size]])
        means, cw, offsets = tdigest.compress_sorted_segments(values, weights, bounds, delta)
        for i, atom in enumerate(sorted(per_atom)):
            want = merge_digests(per_atom[atom], delta)
            assert means[offsets[i] : offsets[i + 1]].tobytes() == want.means.tobytes(), (trial, atom)
            assert cw[offsets[i] : offsets[i + 1]].tolist() == [int(w) for w in want.weights], (trial, atom)


def test_gcfcp_fit_equals_the_per_atom_merge(monkeypatch):
    """GC-FCP's server fit (one pass over all atoms) gives the thresholds and coreset of the per-atom merge; with
    λ integers too large for int64 sums the one-pass merge declines and the per-atom path runs."""
    from flwr_gcfcp.core.groups import parse_groups
    from flwr_gcfcp.methods import group

    rng = np.random.default_rng(9)
    groups = parse_groups("0-3;2-5;4-7;6-9", n_labels=10)
    for trial in range(6):
        cal = group.GCFCP(groups, 0.1, float(rng.choice([25.0, 250.0])))
        sizes = rng.integers(20, 600, 5)
        summaries = [cal.summarize(np.round(rng.random(n), 3), rng.integers(0, 10, n)) for n in sizes]
        pi = [int(x) for x in rng.integers(1, 9, 5)] if trial % 2 else None
        fast = cal.fit(summaries, pi)
        fast_thr, fast_size = dict(fast.thresholds), fast.coreset_size
        fast_core = [np.asarray(x).tolist() for x in fast._coreset[:3]]
        with monkeypatch.context() as m:
            m.setattr(group, "_merge_all_atoms", lambda *args: False)
            slow = cal.fit(summaries, pi)
        assert dict(slow.thresholds) == fast_thr and slow.coreset_size == fast_size
        slow_core = [[int(v) if isinstance(v, (int, np.integer)) else v for v in np.asarray(x).tolist()] for x in slow._coreset[:3]]
        assert slow_core == fast_core
        assert not group._merge_all_atoms(cal, summaries, [2**61] * 5, 5 * 2**61)
