"""Method names -> calibrators: the one place that parses the ``methods`` list."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..core.groups import GroupSpec
from ..core.validation import check_delta
from .adapters import EXTRA_SYNTAX, make_extra_calibrator
from .base import Calibrator
from .group import GCFCP, CentralizedGCFCP, CondCP, MondrianCP
from .marginal import FedCP, FedCPQQ, SplitCP

__all__ = ["METHODS", "make_calibrators"]


METHODS = ("split_cp", "fedcp", "fedcp_raw", "fedcp_qq", "mondrian", "condcp", "centralized_gcfcp", "gcfcp")


def make_calibrators(
    methods: Sequence[str],
    groups: GroupSpec | None,
    alpha: float,
    deltas: Sequence[float] = (250,),
    conservative: bool = False,
    n_classes: int | None = None,
) -> dict[str, Calibrator]:
    """Build the calibrators named in ``methods`` (see module docstring); ``gcfcp`` expands over ``deltas``.

    ``fedcp`` uses digests at the first δ (private). ``conservative=True`` adds the π/δ-corrected GC-FCP variants.
    The class-conditional (``standard``, ``classwise``, ``clustered``) and set-valued (``topk:K``, ``pointwise``,
    ``penalized:LAM``, ``avg_size:KBAR``, ``avg_error``, ``fbeta``, ``hybrid:K:KBAR``) methods are built by
    :func:`flwr_gcfcp.methods.adapters.make_extra_calibrator` (syntax there); ``n_classes`` (default: the
    label count of label-set groups) lets their parameters be checked against L up front.
    """
    if n_classes is None:
        n_classes = getattr(groups, "n_labels", None)
    out: dict[str, Calibrator] = {}
    deltas = [check_delta(d, "deltas") for d in deltas]
    if not deltas:
        raise ValueError("deltas must contain at least one value")
    for method in methods:
        method = method.strip()
        if method == "split_cp":
            cals = [SplitCP(alpha)]
        elif method == "fedcp":
            cal = FedCP(alpha, deltas[0])
            cal.name = "fedcp"
            cals = [cal]
        elif method == "fedcp_raw":
            cals = [FedCP(alpha, None)]
            cals[0].name = "fedcp_raw"
        elif method == "fedcp_qq":
            cals = [FedCPQQ(alpha)]
        elif method in ("mondrian", "condcp", "centralized_gcfcp", "gcfcp"):
            if groups is None:
                raise ValueError(f"method {method!r} needs groups")
            if method == "mondrian":
                cals = [MondrianCP(groups, alpha)]
            elif method == "condcp":
                cals = [CondCP(groups, alpha)]
            elif method == "centralized_gcfcp":
                cals = [CentralizedGCFCP(groups, alpha)]
            else:
                cals = [GCFCP(groups, alpha, d) for d in deltas]
                if conservative:
                    cals += [GCFCP(groups, alpha, d, conservative=True) for d in deltas if math.pi / d < float(alpha)]
        else:
            extra = make_extra_calibrator(method, alpha, deltas, n_classes)
            if extra is None:
                raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}, {EXTRA_SYNTAX}")
            cals = [extra]
        for cal in cals:
            out[cal.name] = cal
    if not out:
        raise ValueError("methods is empty: name at least one method")
    return out
