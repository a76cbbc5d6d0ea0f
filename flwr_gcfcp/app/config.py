"""The bundled app's run config: one typed object, the only source of its keys and defaults.

``[tool.flwr.app.config]`` keys are the kebab-case names of :class:`AppConfig`'s fields; ``DEFAULTS`` is derived
from the fields, so a default lives in one place (pyproject.toml repeats them for ``flwr run``; a test checks they
agree). Conformal settings (methods, groups, α, δ, score, π) go to :func:`flwr_gcfcp.flower.run_conformal_rounds`;
the whole config also goes to the nodes with every request (their own run config may be empty or stale, e.g. under
``flwr.simulation.run_simulation``), where it is validated the same way.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from flwr_gcfcp.core.groups import LabelSetGroups, parse_groups
from flwr_gcfcp.core.validation import parse_bool as check_bool

#: Models of the ``cifar10-train`` data set (the ``model`` key; built by :func:`flwr_gcfcp.app.models.make_cifar10_model`).
CIFAR10_MODELS = ("resnet20-pretrained", "resnet20", "smallcnn")


def parse_bool(key: str, value: Any) -> bool:
    """A run-config boolean (bool, 0/1, 'true'/'false'/'yes'/'no'/'on'/'off'; an empty value is false)."""
    if isinstance(value, str) and not value.strip():
        return False
    return check_bool(value, f"run config: {key}")


@dataclass(frozen=True)
class AppConfig:
    """Typed view of the run config (kebab-case keys -> snake_case fields); the defaults are the app's."""

    dataset: str = "digits"
    data_dir: str = ""
    model: str = "resnet20-pretrained"
    images_per_client: int = 1000
    heldout_per_client: int = 0
    outputs_path: str = ""
    n_cal: int = 0
    client_classes: str = "0,1;2,3;4,5;6,7;8,9"
    calibration_fraction: float = 0.25
    test_fraction: float = 0.25
    seed: int = 0
    num_server_rounds: int = 25
    local_epochs: int = 1
    learning_rate: float = 0.02
    batch_size: int = 16
    alpha: float = 0.1
    deltas: str = "250"
    methods: str = "split_cp,fedcp,gcfcp"
    groups: str = "0-3;2-5;4-7;6-9"
    score: str = "softmax"
    mixture_weights: str = ""
    conservative: bool = False
    calibration_timeout: float = 120.0
    min_calibration_clients: int = 2
    byzantine_clients: int = 0
    train_timeout: float = 600.0
    results_dir: str = ""
    plot: bool = True

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_mapping(cls, *configs: Mapping[str, Any] | None, ignore_unknown: bool = False) -> "AppConfig":
        """Merge run-config style mappings (later ones win); unknown keys raise ValueError naming them."""
        merged: dict[str, Any] = dict(DEFAULTS)
        for cfg in configs:
            for key, value in dict(cfg or {}).items():
                if key not in DEFAULTS:
                    if ignore_unknown:
                        continue
                    raise ValueError(f"run config: unknown key {key!r} (value {value!r}); known: {sorted(DEFAULTS)}")
                merged[key] = value
        kwargs = {f.name: _coerce(_key(f.name), merged[_key(f.name)], type(DEFAULTS[_key(f.name)])) for f in fields(cls)}
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        from flwr_gcfcp.app.partitions import dataset_kind

        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"run config: alpha must be in (0, 1), got {self.alpha!r}")
        if self.num_server_rounds < 0:
            raise ValueError(f"run config: num-server-rounds must be >= 0, got {self.num_server_rounds!r}")
        if self.min_calibration_clients < 1:
            raise ValueError(
                f"run config: min-calibration-clients must be >= 1, got {self.min_calibration_clients!r}"
            )
        if self.byzantine_clients < 0:
            raise ValueError(f"run config: byzantine-clients must be >= 0, got {self.byzantine_clients!r}")
        if self.calibration_timeout <= 0:
            raise ValueError(f"run config: calibration-timeout must be > 0, got {self.calibration_timeout!r}")
        for frac_name in ("calibration_fraction", "test_fraction"):
            v = getattr(self, frac_name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"run config: {_key(frac_name)} must be in (0, 1), got {v!r}")
        kind = dataset_kind(self.dataset)
        if self.model not in CIFAR10_MODELS:
            raise ValueError(f"run config: model must be one of {CIFAR10_MODELS}, got {self.model!r}")
        if self.images_per_client < 1:
            raise ValueError(f"run config: images-per-client must be >= 1, got {self.images_per_client!r}")
        if self.heldout_per_client < 0 or self.heldout_per_client == 1:
            raise ValueError(
                "run config: heldout-per-client must be 0 (all of a client's held-out images) or >= 2 (one "
                f"calibration and one test image), got {self.heldout_per_client!r}"
            )
        # cifar10-train holds calibration and test images out of the CIFAR-10 test images (test-fraction unused)
        if kind == "model" and self.dataset != "cifar10-train" and self.calibration_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "run config: calibration-fraction + test-fraction must be < 1 (the rest trains), got "
                f"{self.calibration_fraction!r} + {self.test_fraction!r}"
            )
        if kind != "model" and self.num_server_rounds != 0:
            raise ValueError(
                f"run config: dataset {self.dataset!r} calibrates a given model ("
                + ("stored model outputs" if kind == "outputs" else "the fitted linear model")
                + f"); there is nothing to train, so num-server-rounds must be 0, got {self.num_server_rounds!r}"
            )
        if kind == "outputs" and not str(self.outputs_path).strip():
            raise ValueError(
                "run config: dataset 'outputs' needs outputs-path (an npz with 'labels' and one of 'logits', "
                "'probs', 'log_probs'; relative paths are read from the shared data folder), got ''"
            )
        if self.seed < 0:
            raise ValueError(f"run config: seed must be >= 0, got {self.seed!r}")
        for int_name in ("local_epochs", "batch_size"):
            if getattr(self, int_name) < 1:
                raise ValueError(f"run config: {_key(int_name)} must be >= 1, got {getattr(self, int_name)!r}")
        if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise ValueError(f"run config: learning-rate must be a finite number > 0, got {self.learning_rate!r}")
        for t_name in ("calibration_timeout", "train_timeout"):
            if not math.isfinite(getattr(self, t_name)):
                raise ValueError(f"run config: {_key(t_name)} must be finite, got {getattr(self, t_name)!r}")
        if self.train_timeout <= 0:
            raise ValueError(f"run config: train-timeout must be > 0, got {self.train_timeout!r}")
        if self.n_cal < 0:
            raise ValueError(f"run config: n-cal must be >= 0 (0 = use calibration-fraction), got {self.n_cal!r}")
        is_interval = str(self.groups).strip().lower().startswith("interval:")
        if kind == "regression" and not is_interval:
            raise ValueError(
                f"run config: dataset 'regression' has groups on its covariate x: use interval groups such as "
                f"'interval:0-2;1-3;2-4;3-5', got {self.groups!r}"
            )
        if kind != "regression" and is_interval:
            raise ValueError(
                f"run config: interval groups ({self.groups!r}) need a scalar covariate; dataset {self.dataset!r} "
                "has class probabilities: use label-set groups ('0-3;2-5') or confidence groups ('confidence:4')"
            )
        is_residual = str(self.score).strip().lower() == "residual"
        if kind == "regression" and not is_residual:
            raise ValueError(
                f"run config: dataset 'regression' uses the score |y - f(x)|: set score = 'residual', got {self.score!r}"
            )
        if kind != "regression" and is_residual:
            raise ValueError(
                f"run config: score 'residual' is for dataset 'regression', not {self.dataset!r} "
                "(classification scores: softmax, lac, aps, raps)"
            )
        self.class_lists()
        for dir_name in ("results_dir", "data_dir"):
            value = getattr(self, dir_name)
            if value and not os.path.isabs(value):
                raise ValueError(f"run config: {_key(dir_name)} must be an absolute path (or ''), got {value!r}")

    # ------------------------------------------------------------------ derived values
    def to_run_config(self) -> dict[str, Any]:
        return {_key(k): v for k, v in asdict(self).items()}

    def client_config(self) -> dict[str, Any]:
        """What the nodes get with every request (ConfigRecord-safe scalars): the whole config."""
        return self.to_run_config()

    def class_lists(self) -> list[list[int]]:
        """``client-classes`` as label lists (the label-set syntax of groups: ``'0,1;2,3'``, ``'0-4;5-9'``)."""
        try:
            spec = parse_groups(str(self.client_classes))
        except ValueError as exc:
            raise ValueError(
                f"run config: client-classes must look like '0,1;2,3' or '0-4;5-9', got {self.client_classes!r}"
            ) from exc
        if not isinstance(spec, LabelSetGroups) or spec.n_groups != len(spec.label_sets):
            raise ValueError(f"run config: client-classes must look like '0,1;2,3' or '0-4;5-9', got {self.client_classes!r}")
        return [list(s) for s in spec.label_sets]

    def results_path(self) -> Path:
        return Path(self.results_dir) if self.results_dir else Path.cwd() / "results"


def _key(field_name: str) -> str:
    return field_name.replace("_", "-")


def _coerce(key: str, value: Any, typ: type) -> Any:
    if typ is bool:
        return parse_bool(key, value)
    try:
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if typ is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run config: {key} must be {typ.__name__}, got {value!r}") from exc


DEFAULTS: dict[str, Any] = {_key(f.name): f.default for f in fields(AppConfig)}
