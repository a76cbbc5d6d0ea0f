"""The bundled ClientApp and ServerApp (public API) and the strategies driven through an in-process Grid (no Ray, no SuperLink)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, Message

from flwr_gcfcp.app import server_app
from flwr_gcfcp.app.status import latest_run
from flwr_gcfcp.app.client_app import app as client_app
from flwr_gcfcp.flower import CalibrationError
from flwr_gcfcp.flower.inprocess import InProcessGrid
from flwr_gcfcp.flower.protocol import CALIBRATE_MESSAGE_TYPE as CAL
from flwr_gcfcp.flower.protocol import PAYLOAD_KEY
from strategies import ConformalStrategy, FedCPStrategy, GCFCPStrategy

pytestmark = pytest.mark.usefixtures("restore_torch_threads")


def _corrupt_payload(reply: Message) -> Message:
    """Replace a digest's encoded data in the reply's payload with NaNs (a malformed payload)."""
    rec = reply.content.array_records[PAYLOAD_KEY]
    key = next(k for k in rec.keys() if k.endswith("/data"))
    bad = rec[key].numpy().astype(np.float64)
    bad[:] = np.nan
    rec[key] = Array(bad)
    return reply


def test_default_run_with_failing_silent_and_malformed_clients(tmp_path, app_config):
    cfg = app_config()
    faults = {1: {CAL: "error"}, 2: {CAL: "silent"}, 3: {CAL: _corrupt_payload}}
    grid = InProcessGrid(client_app, 5, faults=faults)
    result = server_app.run(grid, cfg)

    report = result.results
    reasons = {e["client"]: e["reason"] for e in report["excluded_clients"]}
    ids = grid.node_ids
    assert set(reasons) == {str(ids[1]), str(ids[2]), str(ids[3])}
    assert "error code 2" in reasons[str(ids[1])]
    assert "no reply" in reasons[str(ids[2])]
    assert "malformed" in reasons[str(ids[3])]
    assert sorted(c["client"] for c in report["calibration_clients"]) == sorted([str(ids[0]), str(ids[4])])
    assert set(report["methods"]) == {"split_cp", "fedcp", "gcfcp_delta250"}
    # bytes each client sent for the method (its summary block)
    assert all(report["methods"][m]["bytes_per_client"] > 0 for m in report["methods"])
    assert report["private"] == {"split_cp": False, "fedcp": True, "gcfcp_delta250": True}
    for name, m in report["methods"].items():
        assert 0.0 <= m["marginal_coverage"] <= 1.0
        assert len(m["group_coverage"]) == 4 and len(m["group_set_size"]) == 4

    out = latest_run(tmp_path / "results")
    data = json.loads((out / "results.json").read_text())
    assert set(data["methods"]) == set(report["methods"])
    assert len(data["excluded_clients"]) == 3
    assert data["private"]["split_cp"] is False
    for name in data["methods"]:
        assert (out / f"predictor_{name}.json").is_file()
    assert (out / "results.md").read_text().count("|") > 10
    assert (out / "coverage.png").stat().st_size > 1000
    assert (out / "model.npz").is_file()


def test_code5_reply_is_mapped_back_to_the_dead_node(tmp_path, app_config):
    cfg = app_config(**{"num-server-rounds": 0})
    grid = InProcessGrid(client_app, 5, faults={4: {CAL: "unavailable"}})
    result = server_app.run(grid, cfg)
    excluded = result.results["excluded_clients"]
    assert [e["client"] for e in excluded] == [str(grid.node_ids[4])]
    assert "error code 5" in excluded[0]["reason"]


def test_too_few_answering_clients_fails_clearly(tmp_path, app_config):
    cfg = app_config(**{"num-server-rounds": 0, "min-calibration-clients": 4})
    grid = InProcessGrid(client_app, 5, faults={0: {CAL: "error"}, 1: {CAL: "silent"}})
    with pytest.raises(CalibrationError, match="min-calibration-clients"):
        server_app.run(grid, cfg)


def test_too_few_connected_nodes_does_not_hang(tmp_path, app_config):
    cfg = app_config(**{"min-calibration-clients": 3, "calibration-timeout": 0.5, "client-classes": "0-4;5-9"})
    grid = InProcessGrid(client_app, 2)
    with pytest.raises(CalibrationError, match="only 2 node"):
        server_app.run(grid, cfg)


def test_zero_rounds_calibrates_the_given_arrays(tmp_path, app_config):
    cfg = app_config(**{"num-server-rounds": 0})
    grid = InProcessGrid(client_app, 5)
    initial = server_app.initial_arrays(cfg)
    strategy = GCFCPStrategy(groups=cfg.groups, client_config=cfg.client_config(), calibration_timeout=5)
    result = strategy.start(grid, initial, num_rounds=0)
    assert result.arrays is initial
    assert not any(m.metadata.message_type == "train" for m in grid.sent)
    assert result.report["excluded_clients"] == []
    assert set(result.predictors) == {"gcfcp_delta250", "fedcp"}


def test_thin_subclasses_choose_their_methods(tmp_path):
    assert set(GCFCPStrategy(deltas=(25, 250)).rounds._make_calibrators(10)) >= {
        "gcfcp_delta25", "gcfcp_delta250", "fedcp"
    }
    assert set(FedCPStrategy().rounds._make_calibrators(10)) == {"fedcp"}
    with pytest.raises(ValueError):
        ConformalStrategy(methods=["no_such_method"])


def test_user_strategy_and_model_plug_in(tmp_path, app_config):
    """README snippet: the user's own FedAvg and model arrays, our strategy for calibration."""
    from flwr.serverapp.strategy import FedAvg

    cfg = app_config(**{"num-server-rounds": 1})
    fedavg = FedAvg(fraction_evaluate=0.0, min_available_nodes=5, min_train_nodes=5)
    strategy = GCFCPStrategy(
        fedavg,
        groups="0-3;2-5;4-7;6-9",
        alpha=0.1,
        deltas=(250,),
        client_config=cfg.client_config(),
        calibration_timeout=5,
    )
    grid = InProcessGrid(client_app, 5)
    result = strategy.start(grid, server_app.initial_arrays(cfg), num_rounds=1, train_config=None)
    assert set(result.predictors) == {"gcfcp_delta250", "fedcp"}
    assert len(result.report["calibration_clients"]) == 5


def test_all_methods_share_one_calibration_round_with_mixture_weights(tmp_path, app_config):
    cfg = app_config(
        **{
            "num-server-rounds": 0,
            "methods": "split_cp,fedcp,fedcp_qq,mondrian,condcp,centralized_gcfcp,gcfcp",
            "deltas": "25,250",
            "conservative": True,
            "mixture-weights": "1,1,1,1,4",
        },
    )
    grid = InProcessGrid(client_app, 5)
    result = server_app.run(grid, cfg)
    calib_msgs = [m for m in grid.sent if m.metadata.message_type == CAL]
    assert len(calib_msgs) == 5  # one calibration message per node for every method
    methods = result.results["methods"]
    assert {"gcfcp_delta25", "gcfcp_delta250", "condcp", "fedcp_qq", "mondrian", "split_cp"} <= set(methods)
    assert any(name.endswith("_conservative") for name in methods)
    private = result.results["private"]
    assert private["condcp"] is False and private["centralized_gcfcp"] is False and private["gcfcp_delta25"] is True
    assert not result.results["excluded_clients"]
    # π reaches the fit: the same run with uniform weights changes the λ-weighted methods, not unweighted CondCP
    uniform_cfg = app_config(
        "u",
        **{"num-server-rounds": 0, "methods": "condcp,centralized_gcfcp,gcfcp", "deltas": "25,250", "mixture-weights": ""},
    )
    uniform = server_app.run(InProcessGrid(client_app, 5), uniform_cfg)
    assert uniform.calibrators["condcp"].thresholds == result.calibrators["condcp"].thresholds
    assert uniform.calibrators["centralized_gcfcp"].thresholds != result.calibrators["centralized_gcfcp"].thresholds


def test_pyproject_run_config_equals_the_app_defaults():
    """AppConfig is the only source of defaults; pyproject.toml repeats them for `flwr run` and must agree."""
    import tomllib
    from pathlib import Path

    from flwr_gcfcp.app.config import DEFAULTS

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"] == DEFAULTS


def test_config_errors_name_the_key():
    from flwr_gcfcp.app.config import AppConfig

    with pytest.raises(ValueError, match="unknown key 'nope'"):
        AppConfig.from_mapping({"nope": 1})
    with pytest.raises(ValueError, match="plot must be true or false, got 'maybe'"):
        AppConfig.from_mapping({"plot": "maybe"})
    with pytest.raises(ValueError, match="client-classes must look like"):
        AppConfig.from_mapping({"client-classes": "0,1;x"})
    assert AppConfig.from_mapping({"client-classes": "0-2;3,5", "plot": "off"}).class_lists() == [[0, 1, 2], [3, 5]]
