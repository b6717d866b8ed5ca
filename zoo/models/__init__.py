"""Model registry: `create(name, **options)` builds a Flax module, `names()` lists them.

Variants are rows of a table (a class plus the options it fixes), not subclasses.
"""

import dataclasses
from typing import Any

import flax.linen as nn

from zoo.models.cnn import ConvNet, SeedCNN
from zoo.models.rnn import CNNLSTM, CharLM, Forecaster, RNNClassifier, sample

_MODELS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "cnn": (SeedCNN, {}),
    "convnet": (ConvNet, {}),
    "lstm": (RNNClassifier, {"cell": "lstm"}),
    "gru": (RNNClassifier, {"cell": "gru"}),
    "bilstm": (RNNClassifier, {"cell": "lstm", "bidirectional": True}),
    "bigru": (RNNClassifier, {"cell": "gru", "bidirectional": True}),
    "charlm": (CharLM, {}),
    "cnn_lstm": (CNNLSTM, {}),
    "forecast": (Forecaster, {}),
}


# What each model's output is for: logits over classes, logits at every step, or real values.
_TASKS: dict[type[nn.Module], str] = {CharLM: "language", Forecaster: "regress"}


def task(name: str) -> str:
    """'classify', 'language' or 'regress': the kind of dataset model `name` trains on."""
    return _TASKS.get(_lookup(name)[0], "classify")


def names() -> list[str]:
    """The registered model names."""
    return sorted(_MODELS)


def options(name: str) -> list[str]:
    """The options `create(name, ...)` accepts."""
    cls, fixed = _lookup(name)
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in ("parent", "name") and f.name not in fixed
    ]


def create(name: str, **opts) -> nn.Module:
    """Builds the model registered as `name` with the given hyperparameters.

    Raises:
      ValueError: for an unknown name or option, naming the valid ones.
    """
    valid = options(name)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise ValueError(
            f"model {name!r} has no option {', '.join(unknown)}; valid options: {', '.join(valid)}"
        )
    cls, fixed = _lookup(name)
    return cls(**fixed, **opts)


def _lookup(name: str) -> tuple[type[nn.Module], dict[str, Any]]:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose from: {', '.join(names())}")
    return _MODELS[name]


__all__ = [
    "CNNLSTM",
    "CharLM",
    "ConvNet",
    "Forecaster",
    "RNNClassifier",
    "SeedCNN",
    "create",
    "names",
    "options",
    "sample",
    "task",
]
