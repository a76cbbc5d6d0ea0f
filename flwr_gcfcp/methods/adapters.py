"""Class-conditional CP and set-valued frameworks as calibrators of the shared (one-round) calibration round.

These adapters implement the :class:`~flwr_gcfcp.methods.Calibrator` API by delegating to
:class:`~flwr_gcfcp.methods.classcond.FederatedClassConditionalCP` and :class:`~flwr_gcfcp.methods.setvalued.SetValuedClassifier`,
so ``make_calibrators`` / ``client_payload`` / ``fit_all`` / ``predictor_arrays`` (and therefore the Flower
strategies) run them next to GC-FCP and FedCP in the **same single calibration round**.

Method names (``methods`` in the run config; comma-separated; parameters after ``:``)
------------------------------------------------------------------------------------
A method is ``NAME[:VALUE...][:KEY=VALUE...]``: positional values in the order below, then optional
``key=value`` options, all separated by ``:`` (never by ``,``, which separates methods). Every value is validated
and an error names the method text and the value.

==============================  ==================  =====================================================================
method (result name)            set                 calibration (what a client sends)
==============================  ==================  =====================================================================
``standard``                    ``s(x,y) <= q``     FedCP-style merged per-class T-digests, one threshold (unit weights)
``classwise``                   ``s(x,y) <= q[y]``  per-class digests; one threshold per class (+inf if too few points)
``clustered``                   ``s(x,y) <= q[y]``  Ding et al. from clustering/proper per-class digests (one round)
``topk:K``                      ``top(x, K)``       none (``1 <= K < L``)
``pointwise[:EPS]``             ``top(x, k_ε(x))``  NLL sums on the shared temperature grid (federated temperature)
``penalized:LAM``               ``p̂_l >= LAM``      none (``0 <= LAM <= 1``)
``avg_size:KBAR``               ``p̂_l >= t``        digest of every ``p̂_l(x_i)`` (unlabeled); ``0 < KBAR < L``, t = Ĝ⁻¹
``avg_error[:EPS]``             ``1 - p̂_l <= q``    digest of the LAC scores ``1 - p̂_y`` (FedCP rule at level EPS)
``fbeta[:BETA]``                ``p̂_l >= θ*``       digest of every ``p̂_l(x_i)`` (shared with ``avg_size``); ``BETA > 0``
``hybrid:K:KBAR``               ``p̂_l >= t ∩ top_K`` digest of the top-K values; ``0 < KBAR < K < L``
==============================  ==================  =====================================================================

Defaults: ``EPS = alpha`` (the run's α) for ``pointwise`` / ``avg_error``; ``BETA = 1``. Long aliases are
accepted (``top_k``, ``pointwise_error``, ``average_size``, ``average_error``, ``f_beta``, ``hybrid_size``).
Options (``key=value``):

* every digest-based method: ``delta=D`` (default: the first of the run's ``deltas``);
* ``standard`` / ``classwise`` / ``clustered`` / ``avg_error``: ``conservative=true`` (rank ``k + ⌈W π/δ⌉``:
  coverage >= 1 - α despite the digest error; see :mod:`flwr_gcfcp.methods.classcond`);
* ``clustered``: ``gamma=G`` (clustering fraction, default ``L/(L + 75)``, see below), ``clusters=M`` (default:
  Ding et al.'s heuristic from the exact merged class counts);
* ``pointwise``: ``ts=false`` (no temperature scaling: T = 1, no calibration); ``offset=R`` (the survey's offset
  ``r >= 0`` of eq. 5: ``k_ε(x) = min{k : Σ p̂_(l) >= 1 - ε + r}``) or ``offset=sqrt`` (``r = sqrt(L/n)``, n the
  pooled number of calibration points; needs temperature scaling). The temperature is the NLL grid argmin refined
  by parabolic interpolation (:func:`~flwr_gcfcp.methods.setvalued.refine_temperature`);
* ``avg_size`` / ``hybrid``: ``rule=survey`` (default: the survey's ``Ĝ⁻¹(k̄) = inf{t : Ĝ(t) <= k̄}``, the
  ``(⌊k̄N⌋ + 1)``-th largest pooled value) or ``rule=exact_size`` (one order statistic fewer: mean size on the
  calibration data at most k̄); see :mod:`~flwr_gcfcp.methods.setvalued`.

The result name is the method text with ``:`` replaced by ``_`` and ``=`` removed, numbers normalised
(``avg_size:2`` -> ``avg_size_2``, ``hybrid:3:1.5`` -> ``hybrid_3_1.5``, ``clustered:gamma=0.3`` ->
``clustered_gamma0.3``), so it is safe as an ``ArrayRecord`` key prefix and a file name.

Scores and inputs. The class-conditional methods use the calibration scores of the run's ``score``
(softmax/lac, aps or raps; the evaluation round uses the same score matrix), plus the true labels. The set-valued
frameworks work on the probability rows ``p̂(x)`` (``average_error`` is the LAC rule ``1 - p̂_y`` whatever the run's
score) and the labels where needed. ``client_payload(..., labels=, probs=, rng=)`` passes them through. The mixture
weights π do not enter these calibrations (every calibration point has unit weight, as in
:mod:`~flwr_gcfcp.methods.classcond` and :mod:`~flwr_gcfcp.methods.setvalued`); they still weight the evaluation.

One-round protocols (no extra round is added to the strategies)
-----------------------------------------------------------------
* ``clustered``: the γ heuristic of Ding et al. needs the global class counts before the clients split their
  points, i.e. a count round. The Flower round uses the one-round variant that ``classcond`` supports with a
  given γ: the clients split with ``gamma`` (option) or, by default, ``γ = L/(L + 75)``, which *is* the heuristic
  whenever every class has at least ``⌈(1 - α)/α⌉`` calibration points in the federation (then ``K' = L``). The
  number of clusters M still comes from the heuristic on the exact merged class counts (or ``clusters=``); unless
  ``1 < M < K_c`` (classes with enough clustering points) every class uses the null cluster, i.e. the standard
  threshold of the proper set, and ``info()`` says so (``fallback``, ``null_cluster_reason``). The
  split uses the client's ``rng`` (the Flower client passes a seed derived from ``seed`` and its partition id).
  Heuristics and rules: ``docs/class_conditional.md``.
* ``fbeta``: :meth:`~flwr_gcfcp.methods.setvalued.SetValuedClassifier.fit_federated` brackets the root in a first round and
  solves it exactly on the bracketed values in a second. Here the clients instead send one T-digest of all their
  ``p̂_l(x_i)`` (the block ``avg_size`` also uses) and the server takes the exact root of
  ``β²θ - Σ_c w_c (m_c - θ)_+ / N`` on the merged centroids ``(m_c, w_c)``. A centroid keeps the sum of its values,
  so the only error comes from the (at most a few) centroids that straddle θ*; when the digests keep every point
  (δ large) the root equals the centralized :func:`~flwr_gcfcp.methods.setvalued.fbeta_threshold` up to float summation.
* every other method is one round in :mod:`~flwr_gcfcp.methods.classcond` / :mod:`~flwr_gcfcp.methods.setvalued` already;
  ``topk`` / ``penalized`` (and ``pointwise`` with ``ts=false``) send only their point count.

Evaluation round: :func:`predictor_arrays` gives per-label thresholds (rule 1) or the fitted set-valued rule
(rule 2); the clients apply them with :func:`set_mask_from_arrays` (rule 0 = the existing per-atom thresholds).

This module does not import flwr or torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..core.encoding import as_small_uint
from ..core.summaries import DEFAULT_LIMITS, PayloadError, PayloadLimits, decode_digest_blocks, encode_digest_blocks
from ..core.validation import check_delta, check_scores, parse_bool
from .arrays import RULE_LABELS, RULE_SETVALUED, predictor_dict
from .base import Calibrator
from .classcond import FederatedClassConditionalCP
from .setvalued import _NLL_CLIP, _NLL_SCALE, FRAMEWORKS, SetValuedClassifier, _fbeta_root, _check_k, _check_k_bar

__all__ = [
    "ClassConditionalCalibrator",
    "EXTRA_METHODS",
    "SetValuedCalibrator",
    "make_extra_calibrator",
    "parse_method_spec",
]

CLASSCOND_METHODS = ("standard", "classwise", "clustered")
# short name -> setvalued framework; the long framework names are accepted too
SETVALUED_SHORT = {
    "topk": "top_k",
    "pointwise": "pointwise_error",
    "penalized": "penalized",
    "avg_size": "average_size",
    "avg_error": "average_error",
    "fbeta": "f_beta",
    "hybrid": "hybrid_size",
}
_LONG_TO_SHORT = {v: k for k, v in SETVALUED_SHORT.items()}
EXTRA_METHODS = CLASSCOND_METHODS + tuple(SETVALUED_SHORT)
EXTRA_SYNTAX = (
    "standard, classwise, clustered[:gamma=G][:clusters=M], topk:K, pointwise[:EPS][:ts=false][:offset=R|sqrt], "
    "penalized:LAM, avg_size:KBAR[:rule=survey|exact_size], avg_error[:EPS], fbeta[:BETA], "
    "hybrid:K:KBAR[:rule=survey|exact_size] (options delta=D, conservative=true)"
)
# positional parameters and allowed options per method
_POSITIONAL = {
    "standard": (),
    "classwise": (),
    "clustered": (),
    "topk": (("k", True),),
    "pointwise": (("epsilon", False),),
    "penalized": (("lam", True),),
    "avg_size": (("k_bar", True),),
    "avg_error": (("epsilon", False),),
    "fbeta": (("beta", False),),
    "hybrid": (("k", True), ("k_bar", True)),
}
_OPTIONS = {
    "standard": ("delta", "conservative"),
    "classwise": ("delta", "conservative"),
    "clustered": ("delta", "conservative", "gamma", "clusters"),
    "topk": (),
    "pointwise": ("ts", "offset"),
    "penalized": (),
    "avg_size": ("delta", "rule"),
    "avg_error": ("delta", "conservative"),
    "fbeta": ("delta",),
    "hybrid": ("delta", "rule"),
}


# ------------------------------------------------------------------------------------------------ spec parsing
def _num(text: str) -> str:
    v = float(text)
    return f"{int(v)}" if v.is_integer() and abs(v) < 1e15 else f"{v:g}"


def _float(method: str, key: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"method {method!r}: {key} must be a number, got {text!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"method {method!r}: {key} must be a finite number, got {text!r}")
    return v


def _int(method: str, key: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"method {method!r}: {key} must be an integer, got {text!r}") from None


def parse_method_spec(text: str) -> tuple[str, dict[str, str], str] | None:
    """``"avg_size:2"`` -> ``("avg_size", {"k_bar": "2"}, "avg_size_2")``; None if the name is not one of ours.

    Raises ValueError (naming the method text) for a known name with bad positional values or unknown options.
    """
    raw = str(text).strip()
    parts = [p.strip() for p in raw.split(":")]
    base = parts[0].lower().replace("-", "_")
    base = _LONG_TO_SHORT.get(base, base)
    if base not in _POSITIONAL:
        return None
    positional = [p for p in parts[1:] if "=" not in p]
    options = [p for p in parts[1:] if "=" in p]
    if any(not p for p in parts[1:]):
        raise ValueError(f"method {raw!r}: empty parameter (syntax NAME[:VALUE...][:KEY=VALUE...])")
    seen_option = False
    for p in parts[1:]:
        if "=" in p:
            seen_option = True
        elif seen_option:
            raise ValueError(f"method {raw!r}: positional value {p!r} after a key=value option (values come first)")
    slots = _POSITIONAL[base]
    if len(positional) > len(slots):
        want = ":".join(s.upper() for s, _ in slots) or "no positional value"
        raise ValueError(f"method {raw!r}: too many values {positional!r} (expected {base}{':' if slots else ' with '}{want})")
    params: dict[str, str] = {}
    for (slot, _), value in zip(slots, positional):
        params[slot] = value
    missing = [s for s, req in slots[len(positional) :] if req]
    if missing:
        example = base + "".join(f":{s.upper()}" for s, _ in slots)
        raise ValueError(f"method {raw!r}: missing {', '.join(missing)} (syntax {example}, e.g. {_EXAMPLES[base]})")
    name_bits = [base] + [_num(v) if _is_float(v) else v for v in positional]
    for opt in options:
        key, _, value = opt.partition("=")
        key = key.strip().lower()
        if key not in _OPTIONS[base]:
            allowed = ", ".join(_OPTIONS[base]) or "none"
            raise ValueError(f"method {raw!r}: unknown option {key!r} (options of {base}: {allowed})")
        if key in params:
            raise ValueError(f"method {raw!r}: option {key!r} given twice")
        params[key] = value.strip()
        name_bits.append(f"{key}{_num(value) if _is_float(value) else value.strip().lower()}")
    return base, params, "_".join(name_bits)


_EXAMPLES = {
    "topk": "topk:2",
    "penalized": "penalized:0.2",
    "avg_size": "avg_size:2",
    "hybrid": "hybrid:3:1.5",
}


def _is_float(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def make_extra_calibrator(
    spec: str, alpha: float, deltas: Sequence[float] = (250,), n_classes: int | None = None
) -> Calibrator | None:
    """The adapter calibrator for one method spec (see module docstring), or None if ``spec`` is not one of ours."""
    parsed = parse_method_spec(spec)
    if parsed is None:
        return None
    base, params, name = parsed
    raw = str(spec).strip()
    delta = check_delta(_float(raw, "delta", params["delta"]), "delta") if "delta" in params else float(deltas[0])
    if n_classes is not None and (not isinstance(n_classes, (int, np.integer)) or int(n_classes) < 2):
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    if base in CLASSCOND_METHODS:
        conservative = parse_bool(params.get("conservative", "false"), f"method {raw!r}: conservative")
        gamma = _float(raw, "gamma", params["gamma"]) if "gamma" in params else None
        if gamma is not None and not 0 <= gamma <= 1:
            raise ValueError(f"method {raw!r}: gamma must be in [0, 1], got {params['gamma']!r}")
        clusters = _int(raw, "clusters", params["clusters"]) if "clusters" in params else None
        if clusters is not None and clusters < 1:
            raise ValueError(f"method {raw!r}: clusters must be an integer >= 1, got {params['clusters']!r}")
        return ClassConditionalCalibrator(
            base, alpha, n_classes=n_classes, delta=delta, conservative=conservative, gamma=gamma,
            n_clusters=clusters, name=name,
        )
    kwargs: dict[str, object] = {"delta": delta}
    try:
        if "k" in params:
            kwargs["k"] = _check_k(_int(raw, "k", params["k"]), n_classes)
        if "k_bar" in params:
            kb = _float(raw, "k_bar", params["k_bar"])
            if base == "hybrid":
                _check_k_bar(kb, kwargs["k"], what="k")
            else:
                _check_k_bar(kb, n_classes)
            kwargs["k_bar"] = kb
        if base in ("pointwise", "avg_error"):
            kwargs["epsilon"] = _float(raw, "epsilon", params["epsilon"]) if "epsilon" in params else float(alpha)
        if base == "penalized":
            kwargs["lam"] = _float(raw, "lam", params["lam"])
        if base == "fbeta":
            kwargs["beta"] = _float(raw, "beta", params["beta"]) if "beta" in params else 1.0
        if base == "pointwise":
            kwargs["temperature_scaling"] = parse_bool(params.get("ts", "true"), f"method {raw!r}: ts")
            if "offset" in params:
                text = params["offset"].lower()
                kwargs["offset"] = "sqrt" if text == "sqrt" else _float(raw, "offset", params["offset"])
        if base in ("avg_size", "hybrid") and "rule" in params:
            kwargs["size_rule"] = params["rule"].lower()
        if base == "avg_error":
            kwargs["conservative"] = parse_bool(params.get("conservative", "false"), f"method {raw!r}: conservative")
        return SetValuedCalibrator(SETVALUED_SHORT[base], n_classes=n_classes, name=name, **kwargs)
    except ValueError as err:
        if str(err).startswith("method "):
            raise
        raise ValueError(f"method {raw!r}: {err}") from None


# ------------------------------------------------------------------------------------------------ payloads
class _DictSummary(dict):
    """A validated client block in the fit's dict format, with its point count ``n`` (checked equal across
    blocks) and ``size``, the number of values (clusters, sums) a fit processes."""

    n: int
    size: int


def _block_head(block: Mapping[str, np.ndarray], size: int, limits: PayloadLimits) -> list[int]:
    """The block's ``head`` (n first, then the label count where there is one), validated."""
    if "head" not in block:
        raise PayloadError("missing field 'head'")
    arr = np.asarray(block["head"])
    if arr.shape != (size,) or arr.dtype.kind not in "iu" or int(arr.min()) < 0:
        raise PayloadError(f"field 'head' must hold {size} integers >= 0, got {arr!r}")
    head = [int(x) for x in arr.tolist()]
    if head[0] > limits.max_points:
        raise PayloadError(f"n = {head[0]} calibration points exceeds PayloadLimits.max_points = {limits.max_points}")
    return head


def _wrap(block: Mapping[str, np.ndarray], n: int, size: int = 0) -> _DictSummary:
    out = _DictSummary({k: np.asarray(v) for k, v in block.items()})
    out.n = n
    out.size = size
    return out


def _encode_digests(out: Mapping[str, np.ndarray], parts: Sequence[str], n_classes: int | None) -> dict[str, np.ndarray]:
    """One :func:`~flwr_gcfcp.core.summaries.encode_digest_blocks` block for per-class digests of several parts
    (``<part>/offsets, means, weights``; atom key ``part index · L + class``) or for one digest (``means,
    weights``; ``n_classes`` None, atom key 0)."""
    keys, means, counts = [], [], []
    for i, part in enumerate(parts):
        pre = f"{part}/" if part else ""
        m, w = np.asarray(out[f"{pre}means"], dtype=np.float64), np.asarray(out[f"{pre}weights"], dtype=np.int64)
        offsets = np.asarray(out[f"{pre}offsets"]) if n_classes is not None else np.array([0, m.size])
        for c in range(offsets.size - 1):
            a, b = int(offsets[c]), int(offsets[c + 1])
            if b > a:
                keys.append(i * (n_classes or 1) + c)
                means.append(m[a:b])
                counts.append(w[a:b])
    return encode_digest_blocks(keys, means, counts)


def _decode_digests(block, parts: Sequence[str], delta: float, n_classes: int, limits: PayloadLimits):
    """Inverse of :func:`_encode_digests`: per part ``(offsets (L + 1,), means, int64 weights)``, and the points."""
    keys, points, offsets, means, counts = decode_digest_blocks(block, delta, len(parts) * n_classes, limits)
    out = {}
    for i, part in enumerate(parts):
        idx = np.flatnonzero(keys // n_classes == i)  # keys are sorted, so a part's clusters are contiguous
        per_class = np.zeros(n_classes, dtype=np.int64)
        per_class[keys[idx] % n_classes] = np.diff(offsets)[idx]
        lo, hi = (int(offsets[idx[0]]), int(offsets[idx[-1] + 1])) if idx.size else (0, 0)
        out[part] = (np.concatenate([[0], np.cumsum(per_class)]).astype(np.int64), means[lo:hi], counts[lo:hi])
    return out, sum(points.tolist())


def _need(method: str, labels: object, probs: object, what: str) -> None:
    if "labels" in what and labels is None:
        raise ValueError(f"method {method!r} needs the true labels: client_payload(..., labels=...)")
    if "probs" in what and probs is None:
        raise ValueError(f"method {method!r} needs the probability rows: client_payload(..., probs=...)")


# ------------------------------------------------------------------------------------------------ class-conditional
class ClassConditionalCalibrator(Calibrator):
    """Federated standard / classwise / clustered CP (:class:`~flwr_gcfcp.methods.classcond.FederatedClassConditionalCP`).

    Client: per-class (and, for clustered, per-part) T-digests of the calibration scores at ``delta``, integer
    unit weights. Server: merge per class, thresholds by exact integer ranks. Sets ``{y : s(x, y) <= q[y]}``.
    ``standard`` and ``classwise`` share one payload block. See the module docstring for the one-round clustered
    variant (γ given or ``L/(L + 75)``).
    """

    private = True
    extra_inputs = ("labels", "probs", "rng")

    def __init__(
        self,
        method: str,
        alpha: float,
        n_classes: int | None = None,
        *,
        delta: float = 250.0,
        conservative: bool = False,
        gamma: float | None = None,
        n_clusters: int | None = None,
        random_state: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(alpha, None)
        if method not in CLASSCOND_METHODS:
            raise ValueError(f"method must be one of {list(CLASSCOND_METHODS)}, got {method!r}")
        self.method = method
        self._alpha_raw = alpha
        self.n_classes = None if n_classes is None else int(n_classes)
        self.delta = check_delta(delta)
        self.conservative = bool(conservative)
        self.gamma = gamma
        self.n_clusters = n_clusters
        self.random_state = int(random_state)
        self.name = name or method
        if method == "clustered":
            self.summary_kind = f"ccclust{self.delta:g}" + ("" if gamma is None else f"_g{gamma:g}")
        else:
            self.summary_kind = f"ccclass{self.delta:g}"
        self.model: FederatedClassConditionalCP | None = None

    def _new_model(self, n_classes: int) -> FederatedClassConditionalCP:
        if self.n_classes is not None and n_classes != self.n_classes:
            raise ValueError(f"{self.name}: data has {n_classes} classes, the method was set up for {self.n_classes}")
        gamma = self.gamma
        if self.method == "clustered" and gamma is None:
            gamma = n_classes / (n_classes + 75)
        return FederatedClassConditionalCP(
            self.method, self._alpha_raw, n_classes, delta=self.delta, conservative=self.conservative, merge=True,
            gamma=gamma if self.method == "clustered" else None, n_clusters=self.n_clusters,
            random_state=self.random_state,
        )

    # ---- client
    def summarize(self, scores, features=None, pi_k=None, n_clients=None, *, labels=None, probs=None, rng=None):
        _need(self.name, labels, None, "labels")
        s = check_scores(scores, allow_empty=True)
        if self.n_classes is not None:
            L = self.n_classes
        elif probs is not None:
            L = int(np.asarray(probs).shape[1])
        else:
            raise ValueError(f"method {self.name!r}: the number of classes is unknown (give n_classes or probs=)")
        model = self._new_model(L)
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(self.random_state if rng is None else rng)
        out = model.summarize(s, np.asarray(labels, dtype=np.int64).reshape(-1), rng=gen)
        parts = ("clust", "proper") if self.method == "clustered" else ("proper",)
        return _wrap({"head": as_small_uint([s.size, L]), **_encode_digests(out, parts, L)}, s.size)

    # ---- server
    def parse_summary(self, block: Mapping[str, np.ndarray], limits: PayloadLimits = DEFAULT_LIMITS) -> _DictSummary:
        """Validate and decode a client block into the dict :meth:`FederatedClassConditionalCP.fit` reads."""
        n, L = _block_head(block, 2, limits)
        if not 2 <= L <= limits.max_client_values:
            raise PayloadError(f"the class count in 'head' must be an integer >= 2, got {L}")
        if self.n_classes is not None and L != self.n_classes:
            raise PayloadError(f"the class count in 'head' is {L}, expected {self.n_classes}")
        parts = ("clust", "proper") if self.method == "clustered" else ("proper",)
        decoded, total = _decode_digests(block, parts, self.delta, L, limits)
        if total != n:
            raise PayloadError(f"digest counts sum to {total}, but the client reports n = {n} calibration points")
        out: dict[str, np.ndarray] = {"n_classes": np.array([L], dtype=np.int64), "n": np.array([n], dtype=np.int64)}
        for part, (offsets, means, weights) in decoded.items():
            out.update({f"{part}/offsets": offsets, f"{part}/means": means, f"{part}/weights": weights})
        return _wrap(out, n, sum(m.size for _, m, _ in decoded.values()))

    def _fit(self, summaries, pi) -> None:
        L = int(np.asarray(summaries[0]["n_classes"]).reshape(-1)[0])
        if any(int(np.asarray(s["n_classes"]).reshape(-1)[0]) != L for s in summaries):
            raise ValueError(f"{self.name}: clients disagree on the number of classes")
        model = self._new_model(L)
        model.fit([dict(s) for s in summaries])
        self.model = model
        self.n_classes = L

    def _check_fitted(self) -> None:
        if self.model is None:
            raise RuntimeError(f"{self.name} is not fitted: call fit() first")

    @property
    def label_thresholds(self) -> np.ndarray:
        self._check_fitted()
        return np.asarray(self.model.thresholds_, dtype=np.float64)

    @property
    def thresholds(self) -> dict[int, float]:
        """Threshold per class label (not per atom)."""
        return {c: float(t) for c, t in enumerate(self.label_thresholds)}

    def thresholds_for(self, features=None, n=None):
        raise ValueError(f"{self.name} has one threshold per label, not per point: use predict()")

    def predict(self, score_matrix, features=None, probs=None) -> np.ndarray:
        self._check_fitted()
        return self.model.predict(score_matrix)

    def predictor_arrays(self) -> dict[str, np.ndarray]:
        return {"rule": np.array([RULE_LABELS], dtype=np.int64), "label_thresholds": self.label_thresholds}

    def info(self) -> dict:
        """What the fit chose, JSON-able.

        Clustered: ``gamma`` (the γ the clients split with), ``clustering_fraction`` (realised share of clustering
        points), ``n_clusters`` (clusters used, 0 when every class is in the null cluster), ``n_clusters_requested``
        (M), ``n_clusterable`` (classes with at least ``⌈(1 - α)/α⌉`` clustering points), ``fallback`` and
        ``null_cluster_reason`` (every class in the null cluster, and why), ``class_to_cluster``, ``null_classes``.
        """
        self._check_fitted()
        m = self.model
        out = {"method": self.method, "delta": self.delta, "conservative": self.conservative}
        if self.method == "clustered":
            out.update(
                gamma=m.gamma_, clustering_fraction=m.clustering_fraction_, n_clusters=int(m.n_clusters_),
                n_clusters_requested=int(m.n_clusters_requested_), n_clusterable=int(m.n_clusterable_),
                fallback=m.null_cluster_reason_ is not None, null_cluster_reason=m.null_cluster_reason_,
                class_to_cluster=m.class_to_cluster_.tolist(), null_classes=m.null_classes_.tolist(),
            )
        out["class_counts"] = m.class_counts_.tolist()
        return out

    def predictor(self) -> dict:
        return predictor_dict(self)


# ------------------------------------------------------------------------------------------------ set-valued
class SetValuedCalibrator(Calibrator):
    """One set-valued framework (:class:`~flwr_gcfcp.methods.setvalued.SetValuedClassifier`) in the shared round.

    Sets are built from the probability rows (``predict(..., probs=...)``); ``average_error`` is the LAC rule.
    ``f_beta`` uses the one-round digest variant described in the module docstring.
    """

    private = True
    extra_inputs = ("labels", "probs", "rng")

    def __init__(self, framework: str, *, n_classes: int | None = None, name: str | None = None, **kwargs: object) -> None:
        if framework not in FRAMEWORKS:
            raise ValueError(f"framework must be one of {list(FRAMEWORKS)}, got {framework!r}")
        model = SetValuedClassifier(framework, **kwargs)  # validates the parameters first
        super().__init__(0.1 if model.epsilon is None else model._epsilon_raw, None)
        self.framework = framework
        self.n_classes = None if n_classes is None else int(n_classes)
        self.kwargs = dict(kwargs)
        self.model = model
        self.name = name or _LONG_TO_SHORT[framework]
        d = f"{self.model.delta:g}"
        self.summary_kind = {
            "top_k": "svnone",
            "penalized": "svnone",
            "pointwise_error": "svnll" if self.model.temperature_scaling else "svnone",
            "average_size": f"svprobs{d}",
            "f_beta": f"svprobs{d}",
            "hybrid_size": f"svtop{self.model.k}_{d}",
            "average_error": f"svlac{d}",
        }[framework]
        self._fitted = False

    # ---- client
    def summarize(self, scores=None, features=None, pi_k=None, n_clients=None, *, labels=None, probs=None, rng=None):
        _need(self.name, labels, probs, "probs")
        p = np.asarray(probs, dtype=np.float64)
        if self.n_classes is not None and p.ndim == 2 and p.shape[1] != self.n_classes:
            raise ValueError(f"{self.name}: probs have {p.shape[1]} columns, expected n_classes={self.n_classes}")
        n = int(p.shape[0])
        if self.summary_kind == "svnone":
            return _wrap({"head": as_small_uint([n])}, n)
        fw = "average_size" if self.framework == "f_beta" else self.framework  # f_beta: one round, digest of all p̂
        helper = self.model if fw == self.framework else SetValuedClassifier(fw, k_bar=1.0, delta=self.model.delta)
        if fw in ("pointwise_error", "average_error"):
            _need(self.name, labels, probs, "labels")
        if n == 0:
            out = {"n_labels": np.array([p.shape[1] if p.ndim == 2 else 0], dtype=np.int64)}
            if fw == "pointwise_error":
                out["nll"] = np.zeros(self.model.temperatures.size, dtype=np.int64)
            else:
                out.update(means=np.empty(0), weights=np.empty(0, dtype=np.int64))
        else:
            out = helper.summarize(p, None if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1))
        enc = {"head": as_small_uint([n, int(np.asarray(out["n_labels"]).reshape(-1)[0])])}
        if fw == "pointwise_error":
            enc["nll"] = as_small_uint(out["nll"])
        else:
            enc.update(_encode_digests(out, ("",), None))
        return _wrap(enc, n)

    # ---- server
    def parse_summary(self, block: Mapping[str, np.ndarray], limits: PayloadLimits = DEFAULT_LIMITS) -> _DictSummary:
        """Validate and decode a client block into the dict :meth:`SetValuedClassifier.fit_federated` reads."""
        if self.summary_kind == "svnone":
            n = _block_head(block, 1, limits)[0]
            return _wrap({"n": np.array([n], dtype=np.int64)}, n)
        n, n_labels = _block_head(block, 2, limits)
        if n > 0 and not 2 <= n_labels <= limits.max_client_values:
            raise PayloadError(f"the label count in 'head' must be an integer >= 2, got {n_labels}")
        if self.n_classes is not None and n > 0 and n_labels != self.n_classes:
            raise PayloadError(f"the label count in 'head' is {n_labels}, expected {self.n_classes}")
        out: dict[str, np.ndarray] = {"n": np.array([n], dtype=np.int64), "n_labels": np.array([n_labels], dtype=np.int64)}
        if self.summary_kind == "svnll":
            nll = np.asarray(block.get("nll", []))
            if nll.shape != self.model.temperatures.shape or nll.dtype.kind not in "iu" or (nll < 0).any():
                raise PayloadError(f"field 'nll' must be {self.model.temperatures.size} integers >= 0 (one per temperature)")
            cap = n * round(_NLL_CLIP * _NLL_SCALE)  # every point's rounded NLL is at most the clip
            if any(int(x) > cap or int(x) >= 2**63 for x in nll.tolist()):
                raise PayloadError(f"field 'nll' holds sums above n · {_NLL_CLIP:g} nats (the per-point clip)")
            out["nll"] = nll.astype(np.int64)
            return _wrap(out, n, int(nll.size))
        per_point = {"average_size": None, "f_beta": None, "hybrid_size": self.model.k, "average_error": 1}[self.framework]
        expected = n * (n_labels if per_point is None else per_point)
        if expected > limits.max_points:
            raise PayloadError(f"{expected} digest points exceed PayloadLimits.max_points = {limits.max_points}")
        decoded, points = _decode_digests(block, ("",), self.model.delta, 1, limits)
        _, means, weights = decoded[""]
        if points != expected:
            raise PayloadError(f"digest counts sum to {points}, expected {expected} for n = {n} points")
        out.update(means=means, weights=weights)
        return _wrap(out, n, int(means.size))

    def _fit(self, summaries, pi) -> None:
        model = SetValuedClassifier(self.framework, **self.kwargs)
        if self.summary_kind == "svnone":
            if self.n_classes is not None:
                model._set_labels(self.n_classes)
        elif self.framework == "f_beta":
            self._fit_fbeta_one_round(model, summaries)
        else:
            model.fit_federated([dict(s) for s in summaries if s.n > 0])
        self.model = model
        self._fitted = True

    def _fit_fbeta_one_round(self, model: SetValuedClassifier, summaries) -> None:
        from ..core.tdigest import TDigest, merge_digests

        n_total = sum(s.n for s in summaries)
        if n_total == 0:
            raise ValueError(f"{self.name}: summaries hold no calibration points (every client has n = 0)")
        labels_seen = {int(np.asarray(s["n_labels"])[0]) for s in summaries if s.n > 0}
        if len(labels_seen) > 1:
            raise ValueError(f"clients disagree on the number of labels: {sorted(labels_seen)}")
        model._set_labels(labels_seen.pop())
        digests = [
            TDigest(means=np.asarray(s["means"], dtype=np.float64), weights=np.asarray(s["weights"]).astype(np.int64), delta=model.delta)
            for s in summaries
            if np.asarray(s["means"]).size
        ]
        merged = merge_digests(digests, model.delta) if len(digests) > 1 else digests[0]
        model.threshold_ = _fbeta_root(
            np.asarray(merged.means, dtype=np.float64), np.asarray(merged.weights).astype(np.int64), n_total, model.beta
        )
        model._fitted = True

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise RuntimeError(f"{self.name} is not fitted: call fit() first")

    @property
    def thresholds(self) -> dict[int, float]:
        self._check_fitted()
        t = getattr(self.model, "threshold_", None)
        return {0: math.nan if t is None else float(t)}

    def thresholds_for(self, features=None, n=None):
        raise ValueError(f"{self.name} builds sets from probabilities: use predict(..., probs=...)")

    def predict(self, score_matrix=None, features=None, probs=None) -> np.ndarray:
        self._check_fitted()
        if probs is None:
            raise ValueError(f"{self.name} needs the probability rows: predict(..., probs=...)")
        return self.model.predict(probs)

    def predictor_arrays(self) -> dict[str, np.ndarray]:
        self._check_fitted()
        m = self.model
        nan = math.nan

        def val(x):
            return nan if x is None else float(x)

        return {
            "rule": np.array([RULE_SETVALUED], dtype=np.int64),
            "framework": np.array([FRAMEWORKS.index(self.framework)], dtype=np.int64),
            "k": np.array([0 if m.k is None else int(m.k)], dtype=np.int64),
            "params": np.array([val(m.epsilon), val(m.lam), val(m.k_bar), val(m.beta)], dtype=np.float64),
            "threshold": np.array([val(getattr(m, "threshold_", None))], dtype=np.float64),
            "temperature": np.array([float(getattr(m, "temperature_", 1.0))], dtype=np.float64),
            "temperature_scaling": np.array([int(m.temperature_scaling)], dtype=np.int64),
            "offset": np.array([float(m.offset_)], dtype=np.float64),
        }

    def info(self) -> dict:
        self._check_fitted()
        m = self.model
        return {
            "framework": self.framework,
            "threshold": getattr(m, "threshold_", None),
            "temperature": getattr(m, "temperature_", None),
            **({"offset_r": m.offset_} if self.framework == "pointwise_error" else {}),
            **{k: v for k, v in self.kwargs.items() if k != "temperatures"},
        }

    def predictor(self) -> dict:
        return predictor_dict(self)
