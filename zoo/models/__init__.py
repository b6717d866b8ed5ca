"""Model registry: `create(name, **options)` builds a Flax module, `names()` lists them.

Variants are rows of a table (a class plus the options it fixes), not subclasses.
"""

import dataclasses
import inspect
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


# Options that matter for one value of another option only (fixed by the row, or given, or the
# default): `reset_after` picks between two GRUs and does nothing to an LSTM.
_ONLY_WITH: dict[str, tuple[str, Any]] = {"reset_after": ("cell", "gru")}

# What each model's output is for: logits over classes, logits at every step, or real values.
_TASKS: dict[type[nn.Module], str] = {CharLM: "language", Forecaster: "regress"}


def task(name: str) -> str:
    """'classify', 'language' or 'regress': the kind of dataset model `name` trains on."""
    return _TASKS.get(_lookup(name)[0], "classify")


def takes_lengths(name: str) -> bool:
    """Whether model `name` takes `lengths` of right-padded sequences after its input."""
    return "lengths" in inspect.signature(_lookup(name)[0].__call__).parameters


def names() -> list[str]:
    """The registered model names."""
    return sorted(_MODELS)


def options(name: str) -> list[str]:
    """The options `create(name, ...)` accepts: the model's fields, less those its row fixes and
    those that only apply to another value of a fixed one (`reset_after` for an LSTM)."""
    cls, fixed = _lookup(name)
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in ("parent", "name") and f.name not in fixed and _applies(f.name, fixed)
    ]


def create(name: str, **opts) -> nn.Module:
    """Builds the model registered as `name` with the given hyperparameters.

    Lists (a JSON config's tuples), nested ones too, become tuples, so every model is hashable
    and can be a static argument of `jax.jit` (as `sample` takes it).

    Raises:
      ValueError: for an unknown name or option, naming the valid ones and the models an option
        belongs to, or for an option that does nothing with the given settings (`reset_after`
        with an LSTM cell).
    """
    valid = options(name)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise ValueError(
            f"model {name!r} has no option {', '.join(_with_owners(o) for o in unknown)}; "
            f"valid options: {', '.join(valid)}"
        )
    cls, fixed = _lookup(name)
    defaults = {
        f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
    }
    settings = {**defaults, **fixed, **opts}
    for option in sorted(opts):
        if not _applies(option, settings):
            key, value = _ONLY_WITH[option]
            raise ValueError(
                f"model {name!r} option {option} applies only with {key}={value!r}, "
                f"got {key}={settings[key]!r}"
            )
    return cls(**fixed, **{key: _frozen(value) for key, value in opts.items()})


def _applies(option: str, settings: dict[str, Any]) -> bool:
    if option not in _ONLY_WITH:
        return True
    key, value = _ONLY_WITH[option]
    return key not in settings or settings[key] == value


def _with_owners(option: str) -> str:
    """`option`, and the models that have it: "reset_after (it applies to: bigru, gru)"."""
    owners = [name for name in names() if option in options(name)]
    return f"{option} (it applies to: {', '.join(owners)})" if owners else option


def _frozen(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_frozen(item) for item in value)
    return value


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
