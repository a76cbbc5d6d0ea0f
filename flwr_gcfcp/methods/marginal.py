"""Marginal methods: centralized split CP, FedCP (digests or raw scores) and FedCP-QQ."""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..core.quantiles import fedcp_qq_client_ranks, fedcp_qq_threshold, split_conformal_threshold, weighted_conformal_threshold
from ..core.summaries import DigestSummary, PayloadError, QQSummary, RawSummary, summarize_digests
from ..core.tdigest import TDigest, merge_digests
from ..core.validation import InsufficientDataWarning, check_delta, check_scores
from .base import Calibrator, _client_integer_weights, _repeat_weights, _union

__all__ = ["FedCP", "FedCPQQ", "SplitCP"]


class SplitCP(Calibrator):
    """Centralized split CP on pooled raw scores (the paper's "centralized CP"). Not private."""

    name, private, summary_kind, summary_type = "split_cp", False, "raw", RawSummary

    def __init__(self, alpha: float) -> None:
        super().__init__(alpha, None)

    def summarize(self, scores, features=None, pi_k=None, n_clients=None) -> RawSummary:
        s = check_scores(scores, allow_empty=True)
        return RawSummary(scores=s, atom_keys=np.zeros(s.size, dtype=np.int64))

    def _fit(self, summaries, pi) -> None:
        pooled = np.concatenate([s.scores for s in summaries])
        self._constant = split_conformal_threshold(pooled, self.alpha)


class FedCP(Calibrator):
    """FedCP (Lu et al. 2023) with the exact weighted rank.

    With ``delta`` the clients send one T-digest of their scores (private); the server merges them and evaluates
    ``min{s : Σ_k λ_k #{S_ik <= s} >= 1 - α}`` on the merged clusters with exact integer weights. With
    ``delta=None`` the rule is applied to the raw scores (not private).
    """

    def __init__(self, alpha: float, delta: float | None = None, merge: bool = True) -> None:
        super().__init__(alpha, None)
        self.delta = None if delta is None else check_delta(delta)
        self.merge = merge
        self.private = delta is not None
        self.summary_kind = "raw" if delta is None else f"whole{self.delta:g}"
        self.summary_type = RawSummary if delta is None else DigestSummary
        self.name = "fedcp" if delta is None or delta == 250 else f"fedcp_delta{self.delta:g}"

    def summarize(self, scores, features=None, pi_k=None, n_clients=None):
        s = check_scores(scores, allow_empty=True)
        keys = np.zeros(s.size, dtype=np.int64)
        if self.delta is None:
            return RawSummary(scores=s, atom_keys=keys)
        return summarize_digests(s, keys, self.delta)

    def _fit(self, summaries, pi) -> None:
        ns = [s.n for s in summaries]
        lam_ints, test_w = _client_integer_weights(ns, pi)
        if self.delta is None:
            values = np.concatenate([s.scores for s in summaries])
            weights = _repeat_weights(lam_ints, ns)
        else:
            digests = [
                TDigest(means=s.means, weights=s.counts.astype(object) * w, delta=s.delta)
                for s, w in zip(summaries, lam_ints)
                if s.counts.size
            ]
            if not digests:
                values, weights = np.zeros(0), np.zeros(0, dtype=object)
            else:
                merged = merge_digests(digests, self.delta) if self.merge else _union(digests)
                values, weights = merged.means, merged.weights
        total = sum(w * (n + 1) for w, n in zip(lam_ints, ns))
        self._constant = weighted_conformal_threshold(values, weights, self.alpha, total)


class FedCPQQ(Calibrator):
    """FedCP-QQ (Humbert et al. 2023): one shot, each client sends a few top order statistics.

    Client j sends its largest ``top`` scores; the server picks (k, ℓ) for the smallest client size
    (:func:`quantiles.fedcp_qq_client_ranks`) and returns the k-th smallest of the clients' rank statistics.
    """

    name, private, summary_kind, summary_type = "fedcp_qq", True, "qq", QQSummary

    def __init__(self, alpha: float, n_clients: int | None = None) -> None:
        super().__init__(alpha, None)
        self.n_clients = n_clients

    def summarize(self, scores, features=None, pi_k=None, n_clients=None) -> QQSummary:
        s = np.sort(check_scores(scores, allow_empty=True))[::-1]
        m = n_clients or self.n_clients or 1
        try:
            _, ranks = fedcp_qq_client_ranks([max(s.size, 1)] * m, self.alpha)
            keep = s.size - ranks[0] + 1  # the client's own rank from the top, for the equal-size case
        except ValueError:
            keep = s.size
        # send a margin so that a smaller smallest-client still finds its rank: up to twice the own rank from the top
        keep = int(min(s.size, max(1, 2 * keep)))
        return QQSummary(n=int(s.size), top=s[:keep].copy())

    def _fit(self, summaries, pi) -> None:
        ns = [s.n for s in summaries if s.n > 0]
        if not ns:
            raise ValueError("fedcp_qq: every client has 0 calibration points")
        try:
            k, ranks = fedcp_qq_client_ranks(ns, self.alpha)
        except ValueError as err:
            warnings.warn(f"fedcp_qq: {err}; threshold is +inf", InsufficientDataWarning, stacklevel=3)
            self._constant = math.inf
            return
        stats = []
        for s, rank in zip([s for s in summaries if s.n > 0], ranks):
            from_top = s.n - rank  # 0-based index in the decreasing list
            if from_top >= s.top.size:
                raise PayloadError(f"fedcp_qq: client sent {s.top.size} order statistics, rank {from_top + 1} from the top is needed")
            stats.append(s.top[from_top])
        self._constant = fedcp_qq_threshold(np.asarray(stats), k)
