"""The typed training configuration and its validation."""

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

OPTIMIZERS = ("adam", "sgd", "rmsprop")

# Each model's default dataset and the settings measured to train it well there (README figures).
PRESETS: dict[str, dict[str, Any]] = {
    "cnn": {"dataset": "digits"},
    "convnet": {"dataset": "digits"},
    "lstm": {"dataset": "digits-seq", "epochs": 25},
    "gru": {"dataset": "digits-seq", "epochs": 25},
    "bilstm": {"dataset": "digits-seq", "epochs": 25},
    "bigru": {"dataset": "digits-seq", "epochs": 25},
    "cnn_lstm": {"dataset": "digits-strips", "epochs": 25},
    "charlm": {
        "dataset": "text",
        "epochs": 15,
        "batch_size": 64,
        "learning_rate": 3e-3,
        "model_options": {"hidden_sizes": (256,)},
    },
    "forecast": {"dataset": "series", "epochs": 10, "batch_size": 16},
}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on.

    Attributes:
      model: a name from `zoo.models.names()`.
      model_options: extra hyperparameters passed to `zoo.models.create`.
      dataset: 'digits' (bundled) or 'mnist' (needs `data_path`).
      data_path: MNIST `.npz` file or IDX directory.
      epochs: passes over the training split.
      batch_size: examples per step.
      optimizer: 'adam', 'sgd' (with `momentum`) or 'rmsprop'.
      learning_rate: the optimizer's step size.
      momentum: for 'sgd' and 'rmsprop'.
      seed: fixes the data split, data order, initialisation and dropout.
    """

    model: str = "cnn"
    model_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = "digits"
    data_path: str | None = None
    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    seed: int = 0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            _check_type(field.name, getattr(self, field.name), field.type)
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )

    @classmethod
    def for_model(cls, model: str, **overrides: Any) -> "TrainConfig":
        """The model's preset (default dataset and tuned settings) with `overrides` on top;
        `model_options` given here are merged into the preset's."""
        preset = dict(PRESETS.get(model, {}))
        options = {**preset.pop("model_options", {}), **overrides.pop("model_options", {})}
        return cls.from_dict({**preset, **overrides, "model": model, "model_options": options})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Builds a config, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown config key {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "model_options": dict(self.model_options)}


def _check_type(name: str, value: Any, annotation: Any) -> None:
    if not _matches(value, annotation):
        raise ConfigError(f"{name} must be {_describe(annotation)}, got {value!r}")


def _matches(value: Any, annotation: Any) -> bool:
    if annotation in (int, float):  # bool is an int in Python, never a valid count or rate here
        allowed = int if annotation is int else (int, float)
        return isinstance(value, allowed) and not isinstance(value, bool)
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    return isinstance(value, origin or annotation)


def _describe(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
