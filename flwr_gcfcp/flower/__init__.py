"""The Flower integration (imports flwr, never torch).

- :func:`register_conformal_handlers` (client side, in your ClientApp) and :func:`run_conformal_rounds` (server
  side, in your ServerApp, after any training): the two calls that add calibrated prediction sets to a Flower app;
- :mod:`.protocol`: the versioned wire format (``docs/protocol.md``);
- :mod:`.inprocess`: an in-process grid for tests; :mod:`.reporting`: results.json / results.md / plots.
"""

from .client import ModelOutputs, OutputsError, register_conformal_handlers
from .protocol import PROTOCOL_VERSION, ProtocolError
from .server import CalibrationError, ConformalReport, ConformalRounds, run_conformal_rounds, wait_for_nodes

__all__ = [
    "PROTOCOL_VERSION",
    "CalibrationError",
    "ConformalReport",
    "ConformalRounds",
    "ModelOutputs",
    "OutputsError",
    "ProtocolError",
    "register_conformal_handlers",
    "run_conformal_rounds",
    "wait_for_nodes",
]
