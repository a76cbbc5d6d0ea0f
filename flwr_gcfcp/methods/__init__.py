"""Calibration methods behind one :class:`Calibrator` API, and the shared one-round protocol logic.

No Flower, no torch. ``marginal`` (split CP, FedCP, FedCP-QQ), ``group`` (Mondrian, CondCP, GC-FCP), ``classcond``
and ``setvalued`` (the mathematics), ``adapters`` (those two as calibrators), ``registry`` (method names ->
calibrators), ``rounds`` (client payloads, validated server fit), ``arrays`` (evaluation-round predictor arrays).
"""

from .adapters import ClassConditionalCalibrator, SetValuedCalibrator, make_extra_calibrator, parse_method_spec
from .arrays import ArraysPredictor, predictor_arrays, set_mask_from_arrays, thresholds_from_arrays
from .base import Calibrator
from .group import GCFCP, CentralizedGCFCP, CondCP, DegenerateAtomsWarning, MondrianCP
from .marginal import FedCP, FedCPQQ, SplitCP
from .registry import METHODS, make_calibrators
from .rounds import FitReport, client_payload, fit_all, fit_in_process, payload_bytes

__all__ = [
    "ArraysPredictor",
    "Calibrator",
    "CentralizedGCFCP",
    "ClassConditionalCalibrator",
    "CondCP",
    "DegenerateAtomsWarning",
    "FedCP",
    "FedCPQQ",
    "FitReport",
    "GCFCP",
    "METHODS",
    "MondrianCP",
    "SetValuedCalibrator",
    "SplitCP",
    "client_payload",
    "fit_all",
    "fit_in_process",
    "make_calibrators",
    "make_extra_calibrator",
    "parse_method_spec",
    "payload_bytes",
    "predictor_arrays",
    "set_mask_from_arrays",
    "thresholds_from_arrays",
]
