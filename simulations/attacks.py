"""Attack suite: one hostile client against the calibration round, with and without the robust fit.

Usage::

    python -m simulations.attacks [--splits 10] [--seed 0] [--partitions label-skew,dirichlet]
                                  [--methods gcfcp,fedcp,standard,classwise,clustered] [--attacks ...]
                                  [--defences 0,1,1s] [--out DIR | --update-results] [--data-dir DIR]

``--defences`` lists ``byzantine_clients`` values; ``Ms`` (e.g. ``1s``) is the strict variant: ``fit_all`` with M,
then ``fit_all`` again with M on the clients it kept, i.e. leave-M-out over the unflagged clients whatever was
flagged (docs/robustness.md; if the second screening flags someone too, the record says so).

Setting: the CIFAR-10 ResNet-56 test outputs (score ``1 - p_y``), a random 5000 / 5000 calibration / test split
per seed, 5 clients, groups ``0-3;2-5;4-7;6-9`` by predicted label, α = 0.1, δ = 250, π uniform. Partitions:

* ``label-skew``: client k holds the points of true classes 2k and 2k + 1 (the paper's Table 2 split);
* ``dirichlet``: per class, client shares drawn from Dirichlet(0.5) for each split; calibration and test points
  are assigned to clients by their class's shares (each client's test data follow its own class mix).

Per split, client ``split % 5`` is the attacker (so every client position is attacked equally often). Every
calibration goes through ``client_payload`` (per client) and ``fit_all(..., byzantine_clients=M)``; evaluation
through per-client ``evaluation_counts`` combined by ``aggregate_counts`` with uniform π, once over the benign
clients' test data (what the robust guarantee covers) and once over all five clients' test data.

Attacks (the attacker's payload; the other four clients are honest). Every payload attack is checked to change the
attacker's payload (a no-op attack raises):

=====================  ==========================================================================================
``none``               no attacker (all five honest)
``zeros`` / ``ones``   all calibration scores 0 / 1 (same points, atoms, labels)
``noise``              scores uniform on [0, 1]
``copy``               an exact copy of the next client's payload
``inflated_n``         its own points repeated 100 times (n_k x 100; a valid δ-digest of them)
``tiny_n``             a valid payload of its first 3 points (n_k = 3; validation-level)
``coarse_digest``      valid δ = 5 digests sent under the δ = 250 summary kind (validation-level)
``impossible_atoms``   the last atom of its digest block re-keyed to a key the setup cannot produce: a membership
                       pattern outside ``groups.all_patterns()`` (GC-FCP), atom 1 (FedCP), class id >= L
                       (class-conditional); re-encoded with the library's encoder (validation-level)
``overflow_counts``    four clusters at the lowest score with count 2^62 each added to one atom; the library's
                       encoder sums the atom's counts in int64, which wraps back to the atom's honest n_a, so the
                       payload claims the honest n with 62-bit counts (validation-level)
``oversized``          its points resampled 100x and sent uncompressed (~10^5 clusters) under the δ = 250 kind
                       (validation-level)
``identity_claim``     the attacker's ClientApp claims the next client's ``partition-id`` (mixture weight 4, the
                       others 1); run through ``ConformalRounds.aggregate_calibration`` without a grid
``bad_eval_counts``    evaluation-round counts from one client (covered > n, negative, missing ``n``, ``group_n``
                       of the wrong length, float counts, a consistent lie that every point is covered) through
                       ``flower.protocol.validate_counts`` and ``aggregate_counts``; reported in its own table
=====================  ==========================================================================================

A server exception is recorded, not raised. Each record keeps the clients ``excluded`` (validation, with the reason)
and ``flagged`` (robust screening, with the reason). Writes ``attacks.json`` and ``attacks.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from flwr_gcfcp.core.metrics import to_jsonable

from simulations.reproduce import CIFAR10_LOGITS, _data_file, _score_matrix, default_data_dir, load_outputs, output_dir

ATTACKS = (
    "none", "zeros", "ones", "noise", "copy", "inflated_n", "tiny_n", "coarse_digest", "impossible_atoms",
    "overflow_counts", "oversized", "identity_claim", "bad_eval_counts",
)
VALIDATION_LEVEL = ("tiny_n", "coarse_digest", "impossible_atoms", "overflow_counts", "oversized")
PARTITIONS = ("label-skew", "dirichlet")
METHODS = ("gcfcp", "fedcp", "standard", "classwise", "clustered")
GROUPS = "0-3;2-5;4-7;6-9"
N_CLIENTS, N_CAL, ALPHA, DELTA, DIRICHLET = 5, 5000, 0.1, 250.0, 0.5
COARSE_DELTA, REPEAT, TINY_N, IDENTITY_WEIGHT = 5.0, 100, 3, 4


# ---------------------------------------------------------------------------------------------------- data
class Split:
    """One calibration / test split with client assignments."""

    def __init__(self, smat, labels, features, rng: np.random.Generator, partition: str) -> None:
        n = labels.size
        perm = rng.permutation(n)
        cal, test = perm[:N_CAL], perm[N_CAL:]
        if partition == "label-skew":
            client = labels // 2
        elif partition == "dirichlet":
            shares = rng.dirichlet(np.full(N_CLIENTS, DIRICHLET), size=int(labels.max()) + 1)
            u = rng.random(n)
            client = (u[:, None] > np.cumsum(shares[labels], axis=1)).sum(axis=1).clip(max=N_CLIENTS - 1)
        else:
            raise ValueError(f"unknown partition {partition!r}; choose from {', '.join(PARTITIONS)}")
        self.cal_index = cal
        self.cal_scores = smat[cal, labels[cal]]
        self.cal_labels, self.cal_features, self.cal_client = labels[cal], features[cal], client[cal]
        self.test_smat, self.test_labels = smat[test], labels[test]
        self.test_features, self.test_client = features[test], client[test]


def _make(method: str, groups, delta: float = DELTA) -> dict:
    from flwr_gcfcp.methods import make_calibrators

    return make_calibrators([method], groups, ALPHA, deltas=(delta,), n_classes=10)


def _payload(cals: dict, scores, features, labels, k: int) -> dict[str, np.ndarray]:
    from flwr_gcfcp.methods import client_payload

    return client_payload(cals, scores, features, 1.0 / N_CLIENTS, N_CLIENTS, labels=labels, probs=None, rng=k)


# ---------------------------------------------------------------------------------------------------- attacks
def _relabel(payload: dict, small: dict, big: dict) -> dict:
    """A payload built by calibrators ``small`` sent under ``big``'s summary kind (δ is fixed by the kind, not sent)."""
    kinds = {s.summary_kind: b.summary_kind for s, b in zip(small.values(), big.values())}
    return {f"{kinds[key.split('/', 1)[0]]}/{key.split('/', 1)[1]}": arr for key, arr in payload.items()}


def _digest_prefix(payload: dict) -> str:
    """The first digest block's ``"<kind>/"`` (every digest, class-conditional or set-valued block has ``atoms``)."""
    prefixes = sorted(k[: -len("atoms")] for k in payload if k.endswith("/atoms"))
    if not prefixes:
        raise ValueError(f"payload has no digest block: {sorted(payload)}")
    return prefixes[0]


def _decode(payload: dict, pre: str):
    """The honest digest block under ``pre`` as a :class:`~flwr_gcfcp.core.summaries.DigestSummary` (δ = DELTA)."""
    from flwr_gcfcp.core.summaries import DigestSummary

    return DigestSummary.from_arrays({k[len(pre):]: v for k, v in payload.items() if k.startswith(pre)}, DELTA)


def _encode(payload: dict, pre: str, summary) -> dict:
    """``payload`` with the digest block under ``pre`` replaced by ``summary``'s encoding (the library's encoder);
    other fields of the block (a class-conditional ``head``: n, L) are kept."""
    return dict(payload, **{pre + k: v for k, v in summary.to_arrays().items()})


def _overflow(payload: dict) -> dict:
    """Four clusters at the lowest score with count 2^62 each, added to one atom of the first digest block.

    The library's own encoder sums the atom's counts in int64 (``encode_digest_blocks``): 4 · 2^62 wraps to 0, so
    the encoded atom claims exactly its honest number of points n_a, with counts of 62 bits (the format's widths go
    to 63 bits). This is the old wrap-around takeover expressed in the compact format; the server's checks
    (count width <= bit_length(n_a - 1), exact sums, δ structure) must refuse it.
    """
    from flwr_gcfcp.core.summaries import DigestSummary

    pre = _digest_prefix(payload)
    d = _decode(payload, pre)
    sizes = np.diff(d.offsets)
    points = np.add.reduceat(d.counts, d.offsets[:-1])
    i = int(np.argmax(np.minimum(points, math.floor(DELTA) + 2) - sizes))  # the atom with most room for clusters
    at = int(d.offsets[i])
    low = min(0.0, float(d.means[at]))
    tampered = DigestSummary(
        n=d.n, delta=d.delta, atom_keys=d.atom_keys,
        offsets=np.concatenate([d.offsets[: i + 1], d.offsets[i + 1:] + 4]),
        means=np.insert(d.means, at, np.full(4, low)),
        counts=np.insert(d.counts, at, np.full(4, 2**62, dtype=np.int64)),
    )
    out = _encode(payload, pre, tampered)
    claimed = np.asarray(out[pre + "atoms"], dtype=np.int64)[1]
    if not np.array_equal(claimed, points):  # the wrap-around is the point of the attack
        raise RuntimeError(f"overflow attack: encoded points {claimed.tolist()} != honest {points.tolist()}")
    return out


def _impossible(payload: dict, cal, groups) -> dict:
    """One atom of the first digest block re-keyed to a key the server's setup cannot produce: a membership pattern
    outside ``groups.all_patterns()`` (GC-FCP), atom 1 (FedCP's one atom is 0), a class id >= L (class-conditional)."""
    from flwr_gcfcp.core.summaries import DigestSummary, allowed_atom_keys

    pre = _digest_prefix(payload)
    d = _decode(payload, pre)
    if f"{pre}head" in payload:  # class-conditional block: keys part · L + class, parts = 2 for clustered
        head = np.asarray(payload[f"{pre}head"], dtype=np.int64)
        allowed = (2 if cal.summary_kind.startswith("ccclust") else 1) * int(head[1])
    else:
        allowed = allowed_atom_keys(cal.groups)
    if isinstance(allowed, (int, np.integer)):
        bad = int(allowed)
    else:
        bad = next(k for k in range(2**62) if k not in set(allowed.tolist()) | set(d.atom_keys.tolist()))
    keys = d.atom_keys.copy()
    keys[-1] = bad  # the last atom's points now claim the impossible key
    order = np.argsort(keys, kind="stable")
    blocks = [(d.means[d.offsets[j]: d.offsets[j + 1]], d.counts[d.offsets[j]: d.offsets[j + 1]]) for j in order]
    tampered = DigestSummary(
        n=d.n, delta=d.delta, atom_keys=keys[order],
        offsets=np.concatenate([[0], np.cumsum([m.size for m, _ in blocks])]).astype(np.int64),
        means=np.concatenate([m for m, _ in blocks]), counts=np.concatenate([c for _, c in blocks]),
    )
    return _encode(payload, pre, tampered)


def _changed(a: dict, b: dict) -> bool:
    """Whether two payloads differ in any key, dtype, shape or value."""
    if a.keys() != b.keys():
        return True
    return any(
        np.asarray(a[k]).dtype != np.asarray(b[k]).dtype or not np.array_equal(np.asarray(a[k]), np.asarray(b[k]))
        for k in a
    )


def attack_payload(attack: str, method: str, groups, split: Split, honest: dict, attacker: int, rng) -> dict:
    """The attacker's payload under ``attack``; raises if it equals the attacker's honest payload (a no-op attack)."""
    bad = _attack_payload(attack, method, groups, split, honest, attacker, rng)
    if not _changed(bad, honest[str(attacker)]):
        raise RuntimeError(f"attack {attack!r} on {method} left client {attacker}'s payload unchanged")
    return bad


def _attack_payload(attack: str, method: str, groups, split: Split, honest: dict, attacker: int, rng) -> dict:
    cals = _make(method, groups)
    idx = np.flatnonzero(split.cal_client == attacker)
    s, f, y = split.cal_scores[idx], split.cal_features[idx], split.cal_labels[idx]
    if attack == "zeros":
        return _payload(cals, np.zeros(idx.size), f, y, attacker)
    if attack == "ones":
        return _payload(cals, np.ones(idx.size), f, y, attacker)
    if attack == "noise":
        return _payload(cals, rng.uniform(0, 1, idx.size), f, y, attacker)
    if attack == "copy":
        return dict(honest[str((attacker + 1) % N_CLIENTS)])
    if attack == "inflated_n":
        return _payload(cals, np.tile(s, REPEAT), np.tile(f, REPEAT), np.tile(y, REPEAT), attacker)
    if attack == "tiny_n":
        return _payload(cals, s[:TINY_N], f[:TINY_N], y[:TINY_N], attacker)
    if attack == "coarse_digest":
        small = _make(method, groups, COARSE_DELTA)
        return _relabel(_payload(small, s, f, y, attacker), small, cals)
    if attack == "oversized":
        big = _make(method, groups, 1e9)  # every distinct point its own cluster
        pick = rng.integers(0, idx.size, idx.size * REPEAT)
        jitter = rng.uniform(0, 1e-9, pick.size)
        return _relabel(_payload(big, np.clip(s[pick] + jitter, 0, 1), f[pick], y[pick], attacker), big, cals)
    if attack == "overflow_counts":
        return _overflow(honest[str(attacker)])
    if attack == "impossible_atoms":
        return _impossible(honest[str(attacker)], next(iter(cals.values())), groups)
    raise ValueError(f"unknown attack {attack!r}")


# ---------------------------------------------------------------------------------------------------- evaluation
def _evaluate(fitted, split: Split, groups, clients: Sequence[int]) -> dict:
    from flwr_gcfcp.core import metrics

    mask = fitted.predict(split.test_smat, split.test_features)
    member = np.asarray(groups.membership(split.test_features), dtype=bool)
    counts = {}
    for k in clients:
        idx = np.flatnonzero(split.test_client == k)
        counts[str(k)] = metrics.evaluation_counts(mask[idx], split.test_labels[idx], member[idx])
    agg = metrics.aggregate_counts(counts)
    return {
        "group_coverage": np.asarray(agg["group_coverage"], dtype=float),
        "class_coverage": np.asarray(agg["class_coverage"], dtype=float),
        "set_size": float(agg["marginal_set_size"]),
        "marginal_coverage": float(agg["marginal_coverage"]),
    }


def _defence(label: str) -> tuple[int, bool]:
    """``"1"`` -> (1, False); ``"1s"`` -> (1, True) (strict variant)."""
    text = str(label).strip()
    strict = text.endswith("s")
    digits = text[:-1] if strict else text
    if not digits.isdigit():
        raise ValueError(f"a defence is an integer byzantine_clients, optionally followed by 's' (strict), got {label!r}")
    return int(digits), strict


def _evaluated(fitted, split: Split, groups, attacker: int, attack: str) -> dict:
    """Coverage and size of a fitted calibrator on the benign clients' and on all clients' test data."""
    benign = [k for k in range(N_CLIENTS) if attack == "none" or k != attacker]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {"benign": _evaluate(fitted, split, groups, benign),
                    "all": _evaluate(fitted, split, groups, range(N_CLIENTS))}
    except Exception as err:
        return {"crash": f"prediction: {type(err).__name__}: {err}"[:300]}


def run_case(method, groups, split, payloads, defence: str, attacker, attack) -> dict:
    """Fit one method on the payloads under ``defence`` (see :func:`_defence`) and evaluate; exceptions are recorded."""
    from flwr_gcfcp.methods import fit_all

    m, strict = _defence(defence)
    cals = _make(method, groups)
    name = next(iter(cals))
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = fit_all(cals, payloads, byzantine_clients=m)
            flagged, excluded = dict(report.flagged), dict(report.excluded)
            if strict and m > 0:
                cals = _make(method, groups)
                report = fit_all(cals, {c: payloads[c] for c in report.used}, byzantine_clients=m)
                flagged.update({c: f"second screening: {why}" for c, why in report.flagged.items()})
                excluded.update(report.excluded)
    except Exception as err:  # a server crash is a finding, not the end of the suite
        return {"crash": f"{type(err).__name__}: {err}"[:300], "fit_s": time.perf_counter() - t0}
    fit_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "fit_s": fit_s,
        "excluded": excluded,
        "flagged": flagged,
        "failed": dict(report.failed_methods),
    }
    if name in report.failed_methods:
        return out
    out.update(_evaluated(report.calibrators[name], split, groups, attacker, attack))
    return out


NODE_BASE = 100  # node id of client k in the identity emulation: NODE_BASE + k


def identity_claim(method, groups, split, probs, defence: str, attacker: int) -> dict:
    """The attacker claims the next client's ``partition-id`` (the one with mixture weight ``IDENTITY_WEIGHT``, the
    others 1), through the server's own calibration step without a grid.

    Each client's real ``ClientApp`` (``register_conformal_handlers``) answers ``ConformalRounds.configure_calibration``
    from its calibration probabilities; ``ConformalRounds.aggregate_calibration`` binds weights and fits. A server
    that refuses the defence (``byzantine_clients > 0``) is recorded as ``"na"`` with its reason.
    """
    from flwr.app import ArrayRecord, Context, RecordDict
    from flwr.clientapp import ClientApp

    from flwr_gcfcp.flower import ConformalRounds, register_conformal_handlers
    from flwr_gcfcp.flower.inprocess import set_task_identity

    m = _defence(defence)[0]
    victim = (attacker + 1) % N_CLIENTS
    weights = [IDENTITY_WEIGHT if k == victim else 1 for k in range(N_CLIENTS)]
    t0 = time.perf_counter()
    try:
        steps = ConformalRounds(alpha=ALPHA, groups=GROUPS, methods=method, deltas=(DELTA,), n_classes=probs.shape[1],
                                mixture_weights=weights, timeout=600, min_clients=1, byzantine_clients=m, plot=False)
    except (ValueError, NotImplementedError) as err:
        return {"na": f"{type(err).__name__}: {err}"[:300], "fit_s": 0.0}
    set_task_identity()
    nodes = [NODE_BASE + k for k in range(N_CLIENTS)]

    def outputs(arrays, context, which):
        idx = np.flatnonzero(split.cal_client == int(context.node_id) - NODE_BASE)
        return probs[split.cal_index[idx]], split.cal_labels[idx]

    app = register_conformal_handlers(ClientApp(), outputs)
    contexts = {
        nid: Context(run_id=1, node_id=nid, node_config={"partition-id": victim if k == attacker else k},
                     state=RecordDict(), run_config={})
        for k, nid in enumerate(nodes)
    }
    sent = steps.configure_calibration(ArrayRecord(), nodes)
    for i, msg in enumerate(sent):
        msg.metadata.__dict__["_message_id"] = f"attack-{msg.metadata.dst_node_id}-{i}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = steps.aggregate_calibration(sent, [app(msg, contexts[int(msg.metadata.dst_node_id)]) for msg in sent])
    out: dict[str, Any] = {
        "fit_s": time.perf_counter() - t0,
        "excluded": {str(int(nid) - NODE_BASE): e["reason"] for nid, e in outcome.excluded.items()},
        "flagged": {},
        "failed": dict(outcome.failed_methods),
    }
    if outcome.calibrators:
        out.update(_evaluated(next(iter(outcome.calibrators.values())), split, groups, attacker, "identity_claim"))
    return out


def bad_eval_counts(method, groups, split, honest, attacker) -> dict[str, str]:
    """Evaluation-round attacks: one client's counts go through the server's ``validate_counts`` (as
    ``ConformalRounds.aggregate_evaluation`` does), then ``aggregate_counts`` over the clients it accepted."""
    from flwr_gcfcp.core import metrics
    from flwr_gcfcp.flower.protocol import ProtocolError, validate_counts
    from flwr_gcfcp.methods import fit_all

    cals = _make(method, groups)
    name = next(iter(cals))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = fit_all(cals, honest).calibrators[name]
    mask = fitted.predict(split.test_smat, split.test_features)
    member = np.asarray(groups.membership(split.test_features), dtype=bool)
    counts = {}
    for k in range(N_CLIENTS):
        idx = np.flatnonzero(split.test_client == k)
        counts[str(k)] = metrics.evaluation_counts(mask[idx], split.test_labels[idx], member[idx])
    good = counts[str(attacker)]
    variants = {
        "covered > n": dict(good, covered=good["n"] * 100, group_covered=good["group_n"] * 100),
        "negative counts": dict(good, covered=-good["n"], group_covered=-good["group_n"]),
        "missing n": {k: v for k, v in good.items() if k != "n"},
        "group_n wrong length": dict(good, group_n=good["group_n"][:-1]),
        "float counts": dict(good, covered=good["covered"].astype(np.float64) + 0.5),
        "all covered (consistent lie)": dict(good, covered=good["n"], group_covered=good["group_n"],
                                             class_covered=good["class_n"]),
    }
    out = {}
    for label, bad in variants.items():
        if not _changed(bad, good):
            raise RuntimeError(f"evaluation attack {label!r} left client {attacker}'s counts unchanged")
        reports = dict(counts, **{str(attacker): bad})
        accepted, verdict = {}, "accepted"
        for cid, rep in reports.items():
            try:
                accepted[cid] = validate_counts(rep, n_groups=groups.n_groups, n_labels=split.test_smat.shape[1])
            except ProtocolError as err:
                if cid != str(attacker):
                    raise RuntimeError(f"an honest client's counts were refused: {err}") from err
                verdict = f"excluded: {err}"
        try:
            agg = metrics.aggregate_counts(accepted)
            cov = np.asarray(agg["group_coverage"], dtype=float)
            out[label] = (f"{verdict}; server reports marginal {agg['marginal_coverage']:.3f}, groups "
                          f"{np.round(cov, 3).tolist()} from {len(accepted)} clients")[:300]
        except Exception as err:  # a crash after validation is a finding
            out[label] = f"{verdict}; crash: {type(err).__name__}: {err}"[:300]
    return out


# ---------------------------------------------------------------------------------------------------- driver
def run_suite(
    probs: np.ndarray, labels: np.ndarray, splits: int, seed: int, partitions: Sequence[str], methods: Sequence[str],
    attacks: Sequence[str], defences: Sequence[str], progress: bool = True,
) -> dict:
    from flwr_gcfcp.core.groups import parse_groups

    groups = parse_groups(GROUPS, n_labels=probs.shape[1])
    smat = _score_matrix(probs)
    features = np.argmax(probs, axis=1).astype(np.int64)
    records: list[dict] = []
    eval_attacks: dict[str, dict[str, dict[str, str]]] = {}
    children = np.random.SeedSequence(seed).spawn(splits)
    for partition in partitions:
        for r in range(splits):
            rng = np.random.default_rng(children[r])
            split = Split(smat, labels, features, rng, partition)
            attacker = r % N_CLIENTS
            for method in methods:
                cals = _make(method, groups)
                honest = {}
                for k in range(N_CLIENTS):
                    idx = np.flatnonzero(split.cal_client == k)
                    honest[str(k)] = _payload(cals, split.cal_scores[idx], split.cal_features[idx], split.cal_labels[idx], k)
                for attack in attacks:
                    if attack == "identity_claim":
                        for defence in defences:
                            rec = identity_claim(method, groups, split, probs, defence, attacker)
                            rec.update(partition=partition, split=r, method=method, attack=attack, defence=defence,
                                       attacker=str(attacker))
                            records.append(rec)
                        continue
                    if attack == "bad_eval_counts":
                        if r == 0:
                            eval_attacks.setdefault(partition, {})[method] = bad_eval_counts(method, groups, split, honest, attacker)
                        continue
                    if attack == "none":
                        payloads = honest
                    else:
                        bad = attack_payload(attack, method, groups, split, honest, attacker, rng)
                        payloads = dict(honest, **{str(attacker): bad})
                    for defence in defences:
                        rec = run_case(method, groups, split, payloads, defence, attacker, attack)
                        rec.update(partition=partition, split=r, method=method, attack=attack, defence=defence,
                                   attacker=None if attack == "none" else str(attacker))
                        records.append(rec)
                if progress:
                    print(f"[attacks] {partition} split {r + 1}/{splits} {method} done", file=sys.stderr, flush=True)
    return {"records": records, "evaluation_attacks": eval_attacks, "group_names": GROUPS.split(";")}


def summarize(records: list[dict]) -> list[dict]:
    """Average over splits per (partition, method, attack, defence)."""
    cells: dict[tuple, list[dict]] = {}
    for rec in records:
        cells.setdefault((rec["partition"], rec["method"], rec["attack"], rec["defence"]), []).append(rec)
    rows = []
    for (partition, method, attack, defence), recs in cells.items():
        m, strict = _defence(defence)
        row: dict[str, Any] = {"partition": partition, "method": method, "attack": attack, "defence": defence,
                               "byzantine_clients": m, "strict": strict, "splits": len(recs)}
        ok = [r for r in recs if "benign" in r]
        for part in ("benign", "all"):
            if ok:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from a mixture stays nan
                    gc = np.nanmean([r[part]["group_coverage"] for r in ok], axis=0)
                    cc = np.nanmean([r[part]["class_coverage"] for r in ok], axis=0)
                row[f"group_coverage_{part}"] = gc.tolist()
                row[f"worst_group_coverage_{part}"] = float(np.nanmin(gc))
                row[f"worst_group_coverage_{part}_per_split"] = [float(np.nanmin(r[part]["group_coverage"])) for r in ok]
                row[f"worst_class_coverage_{part}"] = float(np.nanmin(cc))
                row[f"marginal_coverage_{part}"] = float(np.mean([r[part]["marginal_coverage"] for r in ok]))
                row[f"mean_set_size_{part}"] = float(np.mean([r[part]["set_size"] for r in ok]))
        row["fitted_splits"] = len(ok)
        row["na"] = sorted({r["na"] for r in recs if "na" in r})
        row["crashes"] = sorted({r["crash"] for r in recs if "crash" in r})
        row["failed"] = sorted({v for r in recs for v in r.get("failed", {}).values()})[:3]
        att = [r for r in recs if r["attacker"] is not None]
        row["attacker_excluded"] = sum(r["attacker"] in r.get("excluded", {}) for r in att)
        row["attacker_flagged"] = sum(bool(_caught(r)) for r in att)
        row["benign_excluded_or_flagged"] = sum(
            len([c for c in list(r.get("excluded", {})) + list(r.get("flagged", {})) if c not in _caught(r) | {r["attacker"]}])
            for r in recs
        )
        reasons = [v for r in recs for c, v in list(r.get("flagged", {}).items()) + list(r.get("excluded", {}).items())]
        row["example_reason"] = reasons[0] if reasons else ""
        # why the attacker was left out: up to 3 distinct reasons (digits masked: they differ per split), one example each
        for what in ("excluded", "flagged"):
            seen: dict[str, str] = {}
            for r in att:
                why = r.get(what, {}).get(r["attacker"])
                if why is not None:
                    seen.setdefault("".join("#" if ch.isdigit() else ch for ch in why), why)
            row[f"attacker_{what}_reasons"] = list(seen.values())[:3]
        row["benign_excluded_reasons"] = sorted({
            f"{c}: {why}" for r in att for c, why in r.get("excluded", {}).items() if c != r["attacker"]
        })[:2]
        row["fit_s"] = float(np.mean([r["fit_s"] for r in recs]))
        rows.append(row)
    return rows


def _caught(rec: dict) -> set[str]:
    """Clients whose flag neutralises the attacker: the attacker, or the twin of a copy (one copy is kept)."""
    flagged = rec.get("flagged", {})
    out = {c for c in flagged if c == rec["attacker"]}
    if rec["attack"] == "copy":
        out |= {c for c, why in flagged.items() if "identical" in why}
    return out


def _fmt(row: dict | None, key: str, digits: int = 3) -> str:
    if row is None:
        return "-"
    if row.get("na") and not row.get("fitted_splits"):
        return "n/a"
    if row.get("crashes") and not row.get("fitted_splits"):
        return "crash"
    v = row.get(key)
    return "fail" if v is None else f"{v:.{digits}f}"


def markdown(result: dict, command: str, defences: Sequence[str]) -> str:
    rows = result["summary"]
    index = {(r["partition"], r["method"], r["attack"], r["defence"]): r for r in rows}
    s = result["settings"]
    out = [
        "# Attack suite\n",
        f"Command: `{command}`. CIFAR-10 ResNet-56 test outputs, {s['splits']} random 5000 / 5000 splits per "
        f"partition, {N_CLIENTS} clients, groups {GROUPS} by predicted label, α = {ALPHA}, δ = {DELTA:g}, π uniform. "
        "Client `split % 5` attacks. Coverage columns: worst group coverage (minimum over the four groups of the "
        "coverage averaged over splits) on the benign clients' test mixture (what the robust guarantee covers) / "
        "on all five clients' test data. Marginal, worst class (minimum over classes of the split-averaged class "
        "coverage) and size (mean set size) are on the benign mixture. `flagged` / `excl.`: splits "
        "(of those with an attacker) in which the attacker was flagged by the robust screening (for `copy`: the "
        "attacker or its twin, one identical copy being kept) / excluded by "
        "validation; `benign out`: benign clients flagged or excluded, summed over splits (false exclusions). "
        "`M` = `byzantine_clients` (`Ms`: the strict variant, see docs/robustness.md).\n",
        "Validation-level attacks (tiny n, coarse digest, impossible atoms, overflow counts, oversized) are built "
        "with the library's encoder (docs/wire_format.md) and go through `fit_all`'s validation (default "
        "`PayloadLimits`); `identity_claim` goes through the server's `ConformalRounds.aggregate_calibration` "
        "(the attacker's real ClientApp claims the next client's `partition-id`, whose mixture weight is "
        f"{IDENTITY_WEIGHT}, the others 1; coverage columns still on the uniform mixture); `n/a`: the server refused "
        "the defence (reason below). `bad_eval_counts` is in its own table below. The reasons the attacker was "
        "excluded or flagged follow each partition's table.\n",
    ]
    out += _headline(index, s, defences)
    for partition in s["partitions"]:
        out.append(f"\n## {partition}\n")
        head = "| method | attack |"
        sep = "|---|---|"
        for m in defences:
            head += f" M={m} worst group cov. (benign / all) | M={m} marginal | M={m} worst class | M={m} size |"
            sep += "---|---|---|---|"
        head += " flagged (M>0) | excl. | benign out (M=0 / M>0) | fit s (M>0) |"
        sep += "---|---|---|---|"
        out += [head, sep]
        for method in s["methods"]:
            for attack in s["attacks"]:
                cells = [index.get((partition, method, attack, m)) for m in defences]
                if all(c is None for c in cells):
                    continue
                line = f"| {method} | {attack} |"
                for c in cells:
                    line += (f" {_fmt(c, 'worst_group_coverage_benign')} / {_fmt(c, 'worst_group_coverage_all')} |"
                             f" {_fmt(c, 'marginal_coverage_benign')} | {_fmt(c, 'worst_class_coverage_benign')} |"
                             f" {_fmt(c, 'mean_set_size_benign', 2)} |")
                robust = next((c for d, c in zip(defences, cells)
                               if _defence(d)[0] > 0 and c is not None and not (c["na"] and not c["fitted_splits"])), None)
                plain = cells[0]
                n_att = "-" if attack == "none" else str((robust or plain)["splits"])
                flagged = "-" if robust is None or attack == "none" else f"{robust['attacker_flagged']}/{n_att}"
                excl = "-" if attack == "none" else f"{(robust or plain)['attacker_excluded']}/{n_att}"
                benign = f"{plain['benign_excluded_or_flagged'] if plain else '-'} / " + (
                    f"{robust['benign_excluded_or_flagged']}" if robust else "-")
                line += f" {flagged} | {excl} | {benign} | {_fmt(robust, 'fit_s', 2)} |"
                out.append(line)
        out += _reasons(rows, partition, s)
        crashes = sorted({(r["method"], r["attack"], c) for r in rows if r["partition"] == partition for c in r["crashes"]})
        if crashes:
            out.append("\nServer exceptions (recorded, not raised):\n")
            out += [f"- {m} / {a}: `{c}`" for m, a, c in crashes]
        fails = sorted({(r["method"], r["attack"], r["defence"], f) for r in rows if r["partition"] == partition for f in r["failed"]})
        if fails:
            out.append("\nMethods that failed to fit (reported in `failed_methods`):\n")
            out += [f"- {m} / {a} / M={mm}: {f}" for m, a, mm, f in fails]
    if result["evaluation_attacks"]:
        out.append("\n## Evaluation round: bad counts from one client (split 0; the server's `validate_counts`, then "
                   "`aggregate_counts` over the clients it accepted)\n")
        out += ["| partition | method | report | what the server gets |", "|---|---|---|---|"]
        for partition, per in result["evaluation_attacks"].items():
            for method, variants in per.items():
                for label, what in variants.items():
                    out.append(f"| {partition} | {method} | {label} | {what.replace('|', '/')} |")
    reasons = [r["example_reason"] for r in rows if r["example_reason"]]
    if reasons:
        out.append("\nExample reason (robust screening): " + next((x for x in reasons if "Kolmogorov" in x), reasons[0]))
    return "\n".join(out) + "\n"


def _reasons(rows: list[dict], partition: str, s: dict) -> list[str]:
    """Per method and attack: why the attacker was excluded (validation) or flagged (screening), one example per
    distinct reason; benign clients excluded with it; defences the server refused."""
    out = []
    for method in s["methods"]:
        for attack in s["attacks"]:
            cells = [r for r in rows if (r["partition"], r["method"], r["attack"]) == (partition, method, attack)]
            if not cells or attack == "none":
                continue
            lines = []
            for what in ("excluded", "flagged"):
                for d in sorted({d for c in cells for d in c.get(f"attacker_{what}_reasons", [])}):
                    ms = ",".join(c["defence"] for c in cells if d in c.get(f"attacker_{what}_reasons", []))
                    lines.append(f"{what} (M={ms}): {d}")
            lines += [f"benign client excluded too: {d}" for d in sorted({d for c in cells for d in c["benign_excluded_reasons"]})]
            lines += [f"M={c['defence']}: {d}" for c in cells for d in c["na"]]
            if lines:
                out.append(f"- **{method} / {attack}**: " + "; ".join(f"`{x}`" for x in lines))
    return ["\nWhy the attacker was left out (one example per distinct reason):\n", *out] if out else []


def _headline(index: dict, s: dict, defences: Sequence[str]) -> list[str]:
    """The issue's done-means figures: one poisoned client (all scores 0) and no attacker, M = 0 against M = 1."""
    if "0" not in defences or "1" not in defences:
        return []
    out = ["\n## Headline (one attacker sending all scores 0; no attacker)\n",
           "| partition | method | attack | M=0: worst group (benign / all), size | M=1: worst group (benign / all), size "
           "| M=1 groups (benign) | marginal M=0 / M=1 (benign) |", "|---|---|---|---|---|---|---|"]
    for partition in s["partitions"]:
        for method in ("gcfcp", "fedcp"):
            for attack in ("zeros", "none"):
                r0, r1 = index.get((partition, method, attack, "0")), index.get((partition, method, attack, "1"))
                if r0 is None or r1 is None or "group_coverage_benign" not in r1:
                    continue
                cells = [f"{_fmt(r, 'worst_group_coverage_benign')} / {_fmt(r, 'worst_group_coverage_all')}, "
                         f"{_fmt(r, 'mean_set_size_benign', 2)}" for r in (r0, r1)]
                groups = ", ".join(f"{v:.3f}" for v in r1["group_coverage_benign"])
                marg = f"{_fmt(r0, 'marginal_coverage_benign')} / {_fmt(r1, 'marginal_coverage_benign')}"
                out.append(f"| {partition} | {method} | {attack} | {cells[0]} | {cells[1]} | {groups} | {marg} |")
    return out


def _rounded(obj: Any, digits: int = 4) -> Any:
    """Floats rounded for the committed JSON (coverages to 1e-4 are far below the Monte Carlo error)."""
    if isinstance(obj, float):
        return round(obj, digits) if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v, digits) for v in obj]
    return obj


def _csv(text: str, name: str, allowed: Sequence[str] | None = None) -> list[str]:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError(f"{name} must name at least one value, got {text!r}")
    if allowed is not None:
        bad = [t for t in items if t not in allowed]
        if bad:
            raise ValueError(f"unknown {name} {bad}; choose from {', '.join(allowed)}")
    return items


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m simulations.attacks", description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--partitions", default=",".join(PARTITIONS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--defences", default="0,1,1s", help="byzantine_clients values, comma-separated ('1s': strict)")
    parser.add_argument("--out", default=None,
                        help="output folder (default results/simulations/ at the repository root, untracked)")
    parser.add_argument("--update-results", action="store_true",
                        help="write the committed copies in simulations/results/")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.splits < 1:
        raise SystemExit(f"--splits must be >= 1, got {args.splits}")
    partitions = _csv(args.partitions, "partitions", PARTITIONS)
    methods = _csv(args.methods, "methods")
    attacks = _csv(args.attacks, "attacks", ATTACKS)
    defences = _csv(args.defences, "defences")
    try:
        for d in defences:
            _defence(d)
    except ValueError as err:
        raise SystemExit(f"--defences: {err}") from None
    probs, labels = load_outputs(_data_file(args.data_dir, CIFAR10_LOGITS, "attacks"))
    command = "python -m simulations.attacks " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    t0 = time.perf_counter()
    result = run_suite(probs, labels, args.splits, args.seed, partitions, methods, attacks, defences, not args.quiet)
    result["summary"] = summarize(result["records"])
    result["settings"] = {
        "data": CIFAR10_LOGITS, "splits": args.splits, "seed": args.seed, "partitions": partitions, "methods": methods,
        "attacks": attacks, "defences": defences, "n_clients": N_CLIENTS, "n_cal": N_CAL, "alpha": ALPHA,
        "delta": DELTA, "groups": GROUPS, "dirichlet_concentration": DIRICHLET, "wall_s": time.perf_counter() - t0,
    }
    result["command"] = command
    try:
        out = output_dir(args.out, args.update_results)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    out.mkdir(parents=True, exist_ok=True)

    payload = _rounded(to_jsonable({k: v for k, v in result.items() if k != "records"}))
    (out / "attacks.json").write_text(json.dumps(payload, indent=1, allow_nan=True) + "\n")
    (out / "attacks.md").write_text(markdown(result, command, defences))
    print((out / "attacks.md").read_text())
    return result


if __name__ == "__main__":
    main()
