"""Tests for flwr_gcfcp.core.groups: text forms, membership against brute force, patterns, keys, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from flwr_gcfcp.core.groups import (
    CallableGroups,
    ConfidenceGroups,
    IntervalGroups,
    LabelSetGroups,
    MatrixGroups,
    keys_to_patterns,
    parse_groups,
    pattern_keys,
)
from flwr_gcfcp.core.scores import softmax

CIFAR = "0-3;2-5;4-7;6-9"


def rows(matrix: np.ndarray) -> set[tuple[bool, ...]]:
    return {tuple(bool(v) for v in r) for r in matrix}


# ---------------------------------------------------------------------------------------------- label sets


def test_cifar_label_sets_membership_brute_force():
    g = parse_groups(CIFAR, n_labels=10)
    assert isinstance(g, LabelSetGroups) and g.n_groups == 4 and g.names == ["0-3", "2-5", "4-7", "6-9"]
    sets = [set(range(0, 4)), set(range(2, 6)), set(range(4, 8)), set(range(6, 10))]
    pred = np.random.default_rng(0).integers(0, 10, 500)
    expected = np.array([[int(p) in s for s in sets] for p in pred])
    np.testing.assert_array_equal(g.membership(pred), expected)
    assert g.membership(pred).dtype == bool


def test_label_sets_with_commas_and_inferred_n_labels():
    g = parse_groups("0,1,5;2-4")
    assert g.n_labels == 6 and g.label_sets == [(0, 1, 5), (2, 3, 4)]
    assert g.to_text() == "0-1,5;2-4"
    np.testing.assert_array_equal(g.membership([5, 3]), [[True, False], [False, True]])
    assert parse_groups(" labels: 0 , 1,5 ; 2 - 4 ", n_labels=8) == LabelSetGroups([[0, 1, 5], [2, 3, 4]], 8)


def test_label_sets_from_probabilities_break_ties_to_lowest_label():
    g = parse_groups("0;1;2", n_labels=3)
    probs = np.array([[0.4, 0.4, 0.2], [0.2, 0.4, 0.4], [0.1, 0.2, 0.7]])
    np.testing.assert_array_equal(g.membership(probs), np.eye(3, dtype=bool))
    logits = np.random.default_rng(1).normal(size=(100, 3))
    np.testing.assert_array_equal(g.membership(softmax(logits)), g.membership(logits.argmax(axis=1)))


def test_all_and_rest_groups():
    g = parse_groups("0-1;1-2+all+rest", n_labels=5)
    assert g.names == ["0-1", "1-2", "all", "rest"] and g.n_groups == 4
    m = g.membership(np.arange(5))
    np.testing.assert_array_equal(m[:, 2], True)
    np.testing.assert_array_equal(m[:, 3], ~m[:, :2].any(axis=1))
    np.testing.assert_array_equal(m[:, 3], [False, False, False, True, True])
    assert parse_groups("0-1;1-2+rest+all", n_labels=5) == g
    assert g.to_text() == "0-1;1-2+all+rest"
    # the whole space alone also covers points in no listed group
    np.testing.assert_array_equal(parse_groups("0+all", n_labels=3).membership([2]), [[False, True]])


def test_point_in_no_group_raises_with_count_and_first_index():
    g = parse_groups("0-3;2-5", n_labels=10)
    with pytest.raises(ValueError, match=r"features: 2 of 5 point\(s\) belong to no group, first at index 1"):
        g.membership([0, 7, 3, 9, 2])
    assert parse_groups("0-3;2-5+rest", n_labels=10).membership([0, 7]).shape == (2, 3)


def test_label_set_all_patterns_brute_force():
    for text in [CIFAR, "0;0;1-2", "0-1;1-2+all", "0-1;5+rest", "0-4;5-9"]:
        g = parse_groups(text, n_labels=10)
        reachable = []
        for label in range(10):
            try:
                reachable.append(g.membership([label])[0])
            except ValueError:
                pass
        patterns = g.all_patterns()
        assert rows(patterns) == rows(np.array(reachable)) and len(patterns) == len(rows(patterns))
    np.testing.assert_array_equal(
        parse_groups(CIFAR).all_patterns().astype(int),
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 1]],
    )


def test_label_set_random_round_trip():
    rng = np.random.default_rng(3)
    for _ in range(50):
        n_labels = int(rng.integers(1, 30))
        sets = [rng.choice(n_labels, size=int(rng.integers(1, n_labels + 1)), replace=False) for _ in range(4)]
        g = LabelSetGroups(sets, n_labels, add_whole_space=bool(rng.random() < 0.5), add_rest=bool(rng.random() < 0.5))
        back = parse_groups(g.to_text(), n_labels=n_labels)
        assert back == g and back.to_text() == g.to_text()
        assert back.label_sets == [tuple(sorted(int(v) for v in s)) for s in sets]
        assert (back.add_whole_space, back.add_rest) == (g.add_whole_space, g.add_rest)


# ------------------------------------------------------------------------------------------------ intervals


def test_paper_intervals_closed_membership_brute_force():
    g = parse_groups("interval:0-2;1-3;2-4;3-5")
    assert isinstance(g, IntervalGroups) and g.intervals == [(0, 2), (1, 3), (2, 4), (3, 5)]
    x = np.concatenate([np.random.default_rng(0).uniform(0, 5, 300), np.arange(6.0)])
    expected = np.array([[lo <= v <= hi for lo, hi in g.intervals] for v in x])
    np.testing.assert_array_equal(g.membership(x), expected)
    np.testing.assert_array_equal(g.membership([[2.0]]), [[True, True, True, False]])
    with pytest.raises(ValueError, match="1 of 2 point.*first at index 1 \\(feature value 5.5\\)"):
        g.membership([1.0, 5.5])


@pytest.mark.parametrize(
    "text,intervals",
    [
        ("interval:-1.5-0;0-2.5", [(-1.5, 0.0), (0.0, 2.5)]),
        ("interval:[-1.5,0];[0, 2.5]", [(-1.5, 0.0), (0.0, 2.5)]),
        ("interval:-3--1", [(-3.0, -1.0)]),
        ("interval:1e-3-2E+1;.5-7.", [(0.001, 20.0), (0.5, 7.0)]),
        ("interval:-inf-0;0-inf", [(-np.inf, 0.0), (0.0, np.inf)]),
        ("Interval : +1 - 2", [(1.0, 2.0)]),
        ("interval:2-2", [(2.0, 2.0)]),
    ],
)
def test_interval_grammar(text, intervals):
    g = parse_groups(text)
    assert g.intervals == intervals
    assert parse_groups(g.to_text()) == g


def test_interval_random_round_trip_is_exact():
    rng = np.random.default_rng(4)
    for _ in range(100):
        ends = np.sort(rng.normal(scale=10.0 ** rng.integers(-6, 8), size=(3, 2)), axis=1)
        ends[0] = np.round(ends[0])
        g = IntervalGroups([tuple(e) for e in ends], add_rest=bool(rng.random() < 0.5))
        back = parse_groups(g.to_text())
        assert back.intervals == g.intervals and back == g


def test_interval_all_patterns_brute_force():
    rng = np.random.default_rng(5)
    texts = ["interval:0-2;1-3;2-4;3-5", "interval:0-1;2-3+rest", "interval:-1-1;0-0;0-5+all", "interval:-inf-1;1-inf"]
    for text in texts:
        g = parse_groups(text)
        ends = np.array([e for iv in g.intervals for e in iv if np.isfinite(e)])
        probe = np.concatenate([ends, rng.uniform(ends.min() - 2, ends.max() + 2, 5000)])
        m = g._patterns_at(probe)  # membership without the no-group check
        assert rows(g.all_patterns()) == rows(m[m.any(axis=1)])


# ----------------------------------------------------------------------------------------------- confidence


def test_confidence_groups_table5():
    g = parse_groups("confidence:4")
    assert isinstance(g, ConfidenceGroups) and isinstance(g, IntervalGroups)
    np.testing.assert_allclose(g.breakpoints, [0.5, 0.625, 0.75, 0.875, 1.0])
    conf = np.array([0.5, 0.6, 0.625, 0.7, 0.75, 0.8, 0.875, 0.9, 1.0])
    expected = [
        [1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0],
        [0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1],
    ]  # fmt: skip
    np.testing.assert_array_equal(g.membership(conf).astype(int), expected)
    with pytest.raises(ValueError, match="1 of 1 point.*first at index 0"):
        g.membership([0.4])
    np.testing.assert_array_equal(parse_groups("confidence:4+rest").membership([0.4]), [[0, 0, 0, 0, 1]])


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7])
def test_confidence_groups_general_k_brute_force(k):
    g = ConfidenceGroups(k, add_rest=True)
    a = np.linspace(0.5, 1.0, k + 1)
    probs = softmax(np.random.default_rng(k).normal(scale=3.0, size=(2000, 3)))
    conf = np.concatenate([probs.max(axis=1), a])
    expected = np.zeros((len(conf), k + 1), dtype=bool)
    for j in range(1, k + 1):
        hi = a[min(j + 1, k)]
        expected[:, j - 1] = (conf >= a[j - 1]) & ((conf <= hi) if j == k else (conf < hi))
    expected[:, k] = ~expected[:, :k].any(axis=1)
    np.testing.assert_array_equal(g.membership(conf), expected)
    np.testing.assert_array_equal(g.membership(probs), expected[: len(probs)])
    m = g._patterns_at(conf)
    assert rows(m) <= rows(g.all_patterns())


def test_confidence_text_forms():
    assert ConfidenceGroups().to_text() == "confidence:4"
    g = parse_groups("confidence:3:0.3-0.9+all")
    assert (g.k, g.low, g.high, g.add_whole_space) == (3, 0.3, 0.9, True)
    assert parse_groups(g.to_text()) == g and g.to_text() == "confidence:3:0.3-0.9+all"
    assert parse_groups("confidence:2:[0,1]") == ConfidenceGroups(2, 0.0, 1.0)


# --------------------------------------------------------------------------------------- matrix and callable


def test_matrix_groups():
    g = MatrixGroups(3, names=["a", "b", "c"])
    m = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(g.membership(m), m.astype(bool))
    assert g.all_patterns() is None and g.to_text() == "matrix:3" and parse_groups("matrix:3") == g
    with pytest.raises(ValueError, match="features must have d = 3 columns"):
        g.membership(np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="features must be boolean.*first 2 at \\(0, 1\\)"):
        g.membership(np.array([[1, 2, 0]]))
    with pytest.raises(ValueError, match="features must be boolean"):
        g.membership(np.array([[1.0, np.nan, 0.0]]))
    with pytest.raises(ValueError, match="features: 1 of 2 point.*first at index 1"):
        g.membership(np.array([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match="names must have 3 entries"):
        MatrixGroups(3, names=["a"])


def test_callable_groups():
    g = CallableGroups(lambda x: np.stack([np.asarray(x) < 1, np.asarray(x) >= 0], axis=1), 2)
    np.testing.assert_array_equal(g.membership([-1.0, 0.5, 2.0]), [[1, 0], [1, 1], [0, 1]])
    assert g.all_patterns() is None and g.names == ["G1", "G2"]
    with pytest.raises(ValueError, match="no text form"):
        g.to_text()
    with pytest.raises(ValueError, match=r"fn\(features\) must have d = 3"):
        CallableGroups(lambda x: np.ones((len(x), 2), bool), 3).membership([1, 2])
    with pytest.raises(ValueError, match="fn must be callable"):
        CallableGroups("not callable", 2)


# ------------------------------------------------------------------------------------------------ atom keys


@pytest.mark.parametrize("d", [1, 4, 17, 62])
def test_pattern_keys_brute_force_and_round_trip(d):
    m = np.random.default_rng(d).random((300, d)) < 0.4
    keys = pattern_keys(m)
    assert keys.dtype == np.int64
    assert keys.tolist() == [sum(1 << g for g in range(d) if row[g]) for row in m]
    np.testing.assert_array_equal(keys_to_patterns(keys, d), m)


def test_pattern_keys_of_cifar_atoms():
    g = parse_groups(CIFAR)
    assert pattern_keys(g.all_patterns()).tolist() == [1, 3, 6, 12, 8]
    assert pattern_keys(np.array([[1, 0, 1]])).tolist() == [5]


def test_pattern_key_errors():
    with pytest.raises(ValueError, match="membership must have 1 to 62 columns.*d = 63"):
        pattern_keys(np.zeros((2, 63), bool))
    with pytest.raises(ValueError, match="membership must be boolean"):
        pattern_keys(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="membership must be a 2-dimensional"):
        pattern_keys(np.array([True, False]))
    with pytest.raises(ValueError, match=r"keys must lie in \[0, 2\^3\).*first 8 at index 1"):
        keys_to_patterns([1, 8], 3)
    with pytest.raises(ValueError, match="keys must lie"):
        keys_to_patterns([-1], 3)
    with pytest.raises(ValueError, match="keys must be integers"):
        keys_to_patterns([1.5], 3)
    with pytest.raises(ValueError, match="n_groups must be at most 62"):
        keys_to_patterns([1], 63)
    with pytest.raises(ValueError, match="n_groups must be a positive int"):
        keys_to_patterns([1], 0)


# ----------------------------------------------------------------------------------------- round trips, text


@pytest.mark.parametrize(
    "text",
    [CIFAR, "0-2;1-3;2-4;3-5;4-8", "0,1,5;2-4+all", "3+rest", "0-3;2-5;4-7;6-9+all+rest",
     "interval:0-2;1-3;2-4;3-5", "interval:-1.5-0;0-2.5+all", "interval:-inf--1;1-inf+rest",
     "confidence:4", "confidence:6+all+rest", "matrix:5"],
)  # fmt: skip
def test_text_round_trip(text):
    g = parse_groups(text, n_labels=10)
    back = parse_groups(g.to_text(), n_labels=10)
    assert back == g and back.to_text() == g.to_text() and back.names == g.names
    if g.all_patterns() is not None:
        np.testing.assert_array_equal(back.all_patterns(), g.all_patterns())


# ----------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "empty group list"),
        ("interval:", "empty group list"),
        ("0-3;;4-5", "empty label set in '0-3;;4-5'"),
        ("0-3;", "empty label set"),
        ("0-a;2", "cannot read label set '0-a' in '0-a;2'"),
        ("3-1", "start > end"),
        ("interval:0-2;x", "cannot read interval 'x' in 'interval:0-2;x'"),
        ("interval:1-2-3", "cannot read interval"),
        ("interval:3-1", r"intervals\[0\] has lo > hi: \(3.0, 1.0\)"),
        ("interval:0-nan", "cannot read interval"),
        ("foo:1", "unknown group kind 'foo'"),
        ("confidence:x", "confidence groups need a count.*'confidence:x'"),
        ("confidence:0", "k must be a positive int"),
        ("confidence:4:1-0.5", "low must be < high"),
        ("matrix:4+all", "do not apply to matrix"),
        ("0-3+all+all", "given twice"),
    ],
)
def test_bad_text(text, match):
    with pytest.raises(ValueError, match=match):
        parse_groups(text, n_labels=10)


def test_bad_label_sets():
    with pytest.raises(ValueError, match=r"label_sets\[1\] is empty"):
        LabelSetGroups([[0], []], 3)
    with pytest.raises(ValueError, match=r"label_sets is empty"):
        LabelSetGroups([], 3)
    with pytest.raises(ValueError, match=r"label_sets\[0\] has labels outside \[0, 10\): \[12\]"):
        parse_groups("0-3,12", n_labels=10)
    with pytest.raises(ValueError, match=r"label_sets\[0\] must contain integer labels"):
        LabelSetGroups([[0.5]], 3)
    with pytest.raises(ValueError, match="n_labels must be a positive int"):
        LabelSetGroups([[0]], 0)
    with pytest.raises(ValueError, match="text must be a string"):
        parse_groups(None)
    g = parse_groups(CIFAR, n_labels=10)
    with pytest.raises(ValueError, match=r"features must lie in \[0, 10\).*first 10 at index 1"):
        g.membership([0, 10])
    with pytest.raises(ValueError, match="features must have n_labels = 10 columns"):
        g.membership(np.full((2, 4), 0.25))
    with pytest.raises(ValueError, match="features rows must sum to 1"):
        g.membership(np.full((2, 10), 0.5))


def test_bad_intervals_and_features():
    with pytest.raises(ValueError, match="intervals is empty"):
        IntervalGroups([])
    with pytest.raises(ValueError, match=r"intervals\[1\] has lo > hi"):
        IntervalGroups([(0, 1), (2, 1)])
    with pytest.raises(ValueError, match="intervals must not contain NaN"):
        IntervalGroups([(0, np.nan)])
    with pytest.raises(ValueError, match="intervals must be a sequence of"):
        IntervalGroups([(0, 1, 2)])
    g = IntervalGroups([(0, 1)])
    with pytest.raises(ValueError, match="features must be finite.*first at index 1"):
        g.membership([0.5, np.nan])
    with pytest.raises(ValueError, match="features must be a scalar covariate"):
        g.membership(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="add_rest must be a bool"):
        IntervalGroups([(0, 1)], add_rest="yes")


def test_atom_keys_equal_pattern_keys_of_membership_and_unique_keys_equal_numpy():
    from flwr_gcfcp.core.groups import pattern_keys, unique_keys

    rng = np.random.default_rng(3)
    spec = parse_groups("0-3;2-5;4-7;6-9", n_labels=10)
    for features in (rng.integers(0, 10, 500), rng.dirichlet(np.ones(10), 300)):
        assert np.array_equal(spec.atom_keys(features), pattern_keys(spec.membership(features)))
    gap = parse_groups("0-3;6-9", n_labels=10)
    with pytest.raises(ValueError, match="belong to no group"):
        gap.atom_keys([0, 5])
    with pytest.raises(ValueError, match="must lie in"):
        spec.atom_keys([0, 10])
    assert spec.all_patterns() is spec.all_patterns() and not spec.all_patterns().flags.writeable
    for keys in (rng.integers(0, 50, 1000), rng.integers(0, 2**40, 1000), rng.integers(2**16 - 3, 2**16 + 3, 200),
                 np.zeros(0, dtype=np.int64)):
        got = unique_keys(keys)
        want = np.unique(keys, return_inverse=True, return_counts=True)
        for a, b in zip(got, want):
            assert np.array_equal(a, b.reshape(-1))
