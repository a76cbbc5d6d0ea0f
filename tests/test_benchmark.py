"""Fast checks of ``python -m simulations.benchmark`` on a tiny synthetic configuration (no shared data needed)."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

from simulations import benchmark

HAVE_CONDCONF = importlib.util.find_spec("conditionalconformal") is not None


def test_tiny_run_writes_required_keys_and_agrees(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = [
        "--json", str(out), "--data-dir", str(tmp_path / "no-data"), "--n-cal", "600", "--n-test", "600",
        "--appd-points", "3", "--condconf-points", "2", "--repeats", "2", "--digest-n", "5000", "--seed", "3",
        "--condconf-mode", "auto" if HAVE_CONDCONF else "off", "--n-families", "2", "--families-check", "1",
        "--big-n", "4000", "--n-clients", "4", "--e2e-n", "3000", "--cross-atoms", "45", "--cross-reference-atoms", "45",
    ]
    assert benchmark.main(argv) == 0
    res = json.loads(out.read_text())
    assert set(benchmark.REQUIRED_KEYS) <= set(res)
    assert res["synthetic"] is True and res["data_source"].startswith("synthetic")
    assert res["n_cal"] == 600 and res["n_test"] == 600
    assert res["calibrate_ms"] > 0 and res["predict_us_per_point"] > 0
    assert res["appd_ms_per_point"] > 0 and res["speedup_vs_appd"] > 1
    assert res["appd_timing_tolerance"] == 1e-3 and res["appd_agreement_tolerance"] == 1e-10
    assert res["disagreements_vs_appd"] == 0, res["appd"]["disagreement_details_1e-10"]
    # random families (every threshold of the first one checked by App. D), scale runs, minimal reference
    assert res["random_families_appd_disagreements"] == 0 and res["random_families"]["appd_checked_thresholds"] > 0
    assert res["random_families_condcp_fit_ms_max"] >= res["random_families_condcp_fit_ms_median"] > 0
    assert res["minimal_reference"]["condcp"]["disagreements_beyond_1e-12"] == 0
    assert res["scale"]["minimal_reference_disagreements"] == 0 and res["scale"]["n_clients"] == 4
    assert res["engine_over_minimal_reference"] > 0 and res["gcfcp_over_condcp_end_to_end"] > 0
    e2e = res["end_to_end"]
    assert e2e["gcfcp_total_ms"] == pytest.approx(sum(e2e["gcfcp_clients_ms"]) + e2e["gcfcp_server_ms"])
    assert e2e["condcp_critical_path_ms"] == pytest.approx(max(e2e["condcp_clients_ms"]) + e2e["condcp_server_ms"])
    assert res["gcfcp_over_condcp_critical_path"] == pytest.approx(e2e["critical_path_ratio"], rel=1e-3)
    assert [row["n"] for row in res["end_to_end_scaling"]] == [3000]
    assert sum(res["end_to_end_scaling"][0]["n_per_client"]) == 3000
    assert res["appd"]["max_abs_threshold_diff_1e-10"] < 1e-8
    # class x attribute families up to 45 atoms, each also through the scalar loop: the same thresholds
    cross = res["cross_families"]
    assert [row["groups"] for row in cross] == [12, 14] and all(row["atoms"] <= 45 for row in cross)
    for row in cross:
        for name in ("condcp", "centralized_gcfcp"):
            assert row[f"{name}_differences_from_scalar_loop"] == 0 and row[f"{name}_certified_atoms"] > 0
            assert row[f"{name}_speedup_over_scalar_loop"] > 0
    assert res["cross_families_largest_atoms"] == cross[-1]["atoms"]
    # digests were built on 5000 values, not 1e6: the 1e6 keys are null, the measured ones are extras
    assert res["digest_build_ms_1e6"] is None and res["fastdigest_build_ms_1e6"] is None
    assert res["digest"]["digest_n"] == 5000 and res["digest"]["digest_build_ms"] > 0
    if HAVE_CONDCONF:
        assert res["condconf_mode"] in ("exact", "bisection")
        assert res["disagreements_vs_condconf"] == 0
        assert res["condconf_ms_per_point"] > 0 and res["speedup_vs_condconf"] > 0
    else:
        assert res["condconf_ms_per_point"] is None and res["disagreements_vs_condconf"] is None
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == res["summary"] and lines[-1].startswith("calibrate ")
    assert "disagreements 0/" in lines[-1]


def test_skipping_references_gives_nulls(tmp_path):
    res = benchmark.run_benchmark(
        data_dir=tmp_path, appd_points=0, condconf_mode="off", n_cal=300, n_test=300, repeats=1, digest_n=2000,
        log=lambda _msg: None, families="none", big_n=0, e2e_ns=(), cross_atoms=0,
    )
    for key in ("appd_ms_per_point", "speedup_vs_appd", "disagreements_vs_appd", "condconf_ms_per_point",
                "speedup_vs_condconf", "disagreements_vs_condconf", "random_families_condcp_fit_ms_median",
                "cross_families_largest_condcp_fit_ms",
                "condcp_1e6_fit_ms", "server_1000_clients_merge_fit_ms"):
        assert res[key] is None, key
    assert res["condconf_mode"] is None
    json.dumps(benchmark._jsonable(res))  # serialisable


def test_synthetic_stand_in_shape_and_accuracy():
    probs, labels = benchmark.synthetic_outputs(10000, 10, seed=0)
    assert probs.shape == (10000, 10) and labels.shape == (10000,)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    acc = float(np.mean(probs.argmax(axis=1) == labels))
    assert 0.8 < acc < 0.99
    again, _ = benchmark.synthetic_outputs(10000, 10, seed=0)
    assert np.array_equal(probs, again)


@pytest.mark.skipif(not HAVE_CONDCONF, reason="conditionalconformal not installed (bench extra)")
def test_condconf_worker_subprocess_matches_in_process():
    rng = np.random.default_rng(0)
    phi_cal = np.zeros((200, 2))
    phi_cal[:120, 0] = 1
    phi_cal[80:, 1] = 1
    scores = rng.random(200)
    phi_test = np.array([[1.0, 0.0], [1.0, 1.0]])
    local = benchmark.condconf_run(phi_cal, scores, phi_test, 0.1, "bisection")
    remote = benchmark._condconf_subprocess(sys.executable, phi_cal, scores, phi_test, 0.1, "bisection")
    assert "error" not in remote, remote.get("error")
    assert remote["mode"] == local["mode"] == "bisection"
    np.testing.assert_allclose(remote["cutoffs"], local["cutoffs"])
