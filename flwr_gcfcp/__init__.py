"""flwr-gcfcp: group-conditional federated conformal prediction for Flower.

The names below are the library's public API (no Flower, no torch). The Flower integration is
:mod:`flwr_gcfcp.flower` (``register_conformal_handlers``, ``run_conformal_rounds``); the bundled demo app is
:mod:`flwr_gcfcp.app`.
"""

from .core.groups import (
    CallableGroups,
    ConfidenceGroups,
    GroupSpec,
    IntervalGroups,
    LabelSetGroups,
    MatrixGroups,
    keys_to_patterns,
    parse_groups,
    pattern_keys,
)
from .core.metrics import aggregate_counts, coverage_report, covgap, evaluation_counts, frac_undercov
from .core.predictor import Predictor, PredictorIntegrityError
from .core.quantiles import conformal_rank, split_conformal_threshold, weighted_conformal_threshold
from .core.scores import absolute_residual, make_score, softmax
from .core.solver import AtomSolver, atom_thresholds
from .core.summaries import PayloadError
from .core.tdigest import TDigest, build_digest, merge_digests
from .core.validation import InsufficientDataWarning
from .methods import (
    GCFCP,
    ArraysPredictor,
    Calibrator,
    CentralizedGCFCP,
    ClassConditionalCalibrator,
    CondCP,
    DegenerateAtomsWarning,
    FedCP,
    FedCPQQ,
    FitReport,
    MondrianCP,
    SetValuedCalibrator,
    SplitCP,
    client_payload,
    fit_all,
    fit_in_process,
    make_calibrators,
    predictor_arrays,
    set_mask_from_arrays,
)
from .methods.classcond import ClassConditionalCP, FederatedClassConditionalCP
from .methods.setvalued import SetValuedClassifier

__version__ = "0.2.0"

__all__ = [
    "ArraysPredictor",
    "AtomSolver",
    "Calibrator",
    "CallableGroups",
    "CentralizedGCFCP",
    "ClassConditionalCP",
    "ClassConditionalCalibrator",
    "CondCP",
    "ConfidenceGroups",
    "DegenerateAtomsWarning",
    "FedCP",
    "FedCPQQ",
    "FederatedClassConditionalCP",
    "FitReport",
    "GCFCP",
    "GroupSpec",
    "InsufficientDataWarning",
    "IntervalGroups",
    "LabelSetGroups",
    "MatrixGroups",
    "MondrianCP",
    "PayloadError",
    "Predictor",
    "PredictorIntegrityError",
    "SetValuedCalibrator",
    "SetValuedClassifier",
    "SplitCP",
    "TDigest",
    "absolute_residual",
    "aggregate_counts",
    "atom_thresholds",
    "build_digest",
    "client_payload",
    "conformal_rank",
    "coverage_report",
    "covgap",
    "evaluation_counts",
    "fit_all",
    "fit_in_process",
    "frac_undercov",
    "keys_to_patterns",
    "make_calibrators",
    "make_score",
    "merge_digests",
    "parse_groups",
    "pattern_keys",
    "predictor_arrays",
    "set_mask_from_arrays",
    "softmax",
    "split_conformal_threshold",
    "weighted_conformal_threshold",
]
