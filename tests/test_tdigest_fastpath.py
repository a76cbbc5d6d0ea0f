"""The greedy pass of the arcsine T-digest after its speed-up: bit-identical to the plain searchsorted loop."""

from __future__ import annotations

import math

import numpy as np

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
