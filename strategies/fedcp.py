"""FedCP strategy: marginal federated conformal prediction from one merged T-digest (Lu et al. 2023)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .conformal import ConformalStrategy


class FedCPStrategy(ConformalStrategy):
    """:class:`ConformalStrategy` whose default method is FedCP (marginal coverage, digests only).

    ``groups`` still matter for the reported per-group coverage; they do not change FedCP's threshold.
    """

    def __init__(self, train_strategy=None, *, methods: Sequence[str] | str = ("fedcp",), **kwargs: Any):
        super().__init__(train_strategy, methods=methods, **kwargs)
