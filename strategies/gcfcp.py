"""GC-FCP strategy: group-conditional federated conformal prediction (per-atom T-digests)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .conformal import ConformalStrategy


class GCFCPStrategy(ConformalStrategy):
    """:class:`ConformalStrategy` whose default methods are GC-FCP (one per δ) plus FedCP for comparison.

    Pass ``methods=[...]`` to choose others; every method shares the single calibration round.
    """

    def __init__(self, train_strategy=None, *, methods: Sequence[str] | str = ("gcfcp", "fedcp"), **kwargs: Any):
        super().__init__(train_strategy, methods=methods, **kwargs)
