"""Flower strategies (Message API) running GC-FCP / FedCP calibration rounds after any training strategy."""

from .conformal import CALIBRATE_ACTION, EVALUATE_ACTION, CalibrationError, ConformalResult, ConformalStrategy
from .fedcp import FedCPStrategy
from .gcfcp import GCFCPStrategy

__all__ = [
    "CALIBRATE_ACTION",
    "EVALUATE_ACTION",
    "CalibrationError",
    "ConformalResult",
    "ConformalStrategy",
    "FedCPStrategy",
    "GCFCPStrategy",
]
