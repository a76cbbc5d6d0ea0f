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
    for (x, w, delta), (d_fast, m_fast) in zip(cases, fast):
        d = build_digest(x, w, delta)
        m = merge_digests([d, build_digest(x[::-1] * 0.5, None, delta)], delta)
        for a, b in ((d_fast, d), (m_fast, m)):
            assert a.means.tobytes() == b.means.tobytes()
            assert np.asarray(a.weights).tolist() == np.asarray(b.weights).tolist()


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
