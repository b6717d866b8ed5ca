"""Model registry: `create(name, **options)` builds a Flax module, `names()` lists them.

Variants are rows of a table (a class plus the options it fixes), not subclasses. Every row is
creatable with no options: its defaults are the data it was made for (the bundled datasets, or
ImageNet's 224x224x3 images and 1000 classes for the ImageNet families), and
`example_input(name)` is a batch it takes.
"""

import dataclasses
import difflib
import fnmatch
import inspect
import typing
from typing import Any, NamedTuple

import flax.linen as nn
import jax

from zoo.models.autoencoder import (
    VAE,
    ConvAutoencoder,
    VAEOutput,
    generate,
    kl_divergence,
    reconstruct,
)
from zoo.models.cnn import ConvNet, SeedCNN
from zoo.models.convlstm import ConvLSTMClassifier
from zoo.models.lenet import LeNet5
from zoo.models.mobilenet import MobileNetV2
from zoo.models.resnet import ResNet
from zoo.models.rnn import CNNLSTM, CharLM, Forecaster, RNNClassifier, Tagger, sample
from zoo.models.seq2seq import Seq2Seq, beam_search, greedy_decode
from zoo.models.tcn import TCN, TCNForecaster
from zoo.models.validate import check_size, check_type
from zoo.models.vgg import VGG

_MODELS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "cnn": (SeedCNN, {}),
    "convnet": (ConvNet, {}),
    "rnn": (RNNClassifier, {"cell": "rnn"}),
    "birnn": (RNNClassifier, {"cell": "rnn", "bidirectional": True}),
    "lstm": (RNNClassifier, {"cell": "lstm"}),
    "gru": (RNNClassifier, {"cell": "gru"}),
    "bilstm": (RNNClassifier, {"cell": "lstm", "bidirectional": True}),
    "bigru": (RNNClassifier, {"cell": "gru", "bidirectional": True}),
    "tagger": (Tagger, {}),
    "charlm": (CharLM, {}),
    "cnn_lstm": (CNNLSTM, {}),
    "convlstm": (ConvLSTMClassifier, {}),
    "forecast": (Forecaster, {}),
    "tcn": (TCN, {}),
    "tcn_forecast": (TCNForecaster, {}),
    "seq2seq": (Seq2Seq, {}),
    "lenet5": (LeNet5, {}),
    "lenet5_relu": (LeNet5, {"activation": "relu", "pool": "max"}),
    "vgg11": (VGG, {"depth": 11}),
    "vgg11_bn": (VGG, {"depth": 11, "batch_norm": True}),
    "vgg16": (VGG, {"depth": 16}),
    "vgg16_bn": (VGG, {"depth": 16, "batch_norm": True}),
    "resnet18": (ResNet, {"depth": 18}),
    "resnet34": (ResNet, {"depth": 34}),
    "resnet50": (ResNet, {"depth": 50}),
    "resnet20": (ResNet, {"depth": 20}),
    "mobilenet_v2": (MobileNetV2, {}),
    "autoencoder": (ConvAutoencoder, {}),
    "vae": (VAE, {}),
}

# Defaults of a row where the class has none or another one: the bundled data the row trains on,
# or the form a paper gives it (the CIFAR ResNet's stem, width and parameter-free shortcuts).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "convnet": {"input_shape": (28, 28, 1)},  # digits
    "rnn": {"input_shape": (28, 28)},  # digits-seq: rows as steps
    "birnn": {"input_shape": (28, 28)},
    "lstm": {"input_shape": (28, 28)},
    "gru": {"input_shape": (28, 28)},
    "bilstm": {"input_shape": (28, 28)},
    "bigru": {"input_shape": (28, 28)},
    "tagger": {"vocab_size": 102, "bidirectional": True},  # words: the text's characters
    "charlm": {"num_classes": 104},  # the bundled text's characters and the unknown symbol
    "cnn_lstm": {"input_shape": (4, 7, 28, 1)},  # digits-strips
    "convlstm": {"input_shape": (8, 16, 16, 1)},  # digits-moving
    "forecast": {"input_shape": (24, 1)},  # series: 24 months
    "resnet20": {
        "input_shape": (32, 32, 3),
        "num_classes": 10,
        "stem": "cifar",
        "width": 16,
        "shortcut": "pad",
    },
}


# Options that matter for one value of another option only (fixed by the row, or given, or the
# default): `reset_after` picks between two GRUs and does nothing to an LSTM, `activation` is the
# simple RNN's where a model has a cell.
_ONLY_WITH: dict[str, tuple[str, Any]] = {
    "reset_after": ("cell", "gru"),
    "activation": ("cell", "rnn"),
}

# What each model's output is for: logits over classes, over tags or the next token at every
# step, real values, or a reconstruction of its input.
_TASKS: dict[type[nn.Module], str] = {
    CharLM: "language",
    Tagger: "tag",
    Forecaster: "regress",
    TCNForecaster: "regress",
    Seq2Seq: "seq2seq",  # target sequences: logits per target step
    ConvAutoencoder: "reconstruct",  # its input: mean squared error
    VAE: "vae",  # its input: the negative ELBO
}


def task(name: str) -> str:
    """'classify', 'tag', 'language', 'seq2seq', 'regress', 'reconstruct' or 'vae': the kind
    of dataset model `name` trains on (the last two: any images, their labels unused)."""
    return _TASKS.get(_lookup(name)[0], "classify")


# Models whose time is spent in recurrent layers' per-step matmuls (`zoo.layers.recurrent`); not
# those whose convolutions dominate (cnn_lstm's per-frame CNN, ConvLSTM's steps), nor the
# forecaster, whose steps are too small to gain from splitting (measured: its epoch 36% longer).
_RECURRENT = (RNNClassifier, Tagger, CharLM, Seq2Seq)


def recurrent(name: str) -> bool:
    """Whether model `name`'s time goes to recurrent layers stepping through a sequence."""
    return _lookup(name)[0] in _RECURRENT


# Options naming recurrent layer widths, in the models of `_RECURRENT`.
_WIDTH_OPTIONS = ("hidden_sizes", "encoder_sizes", "hidden_size")


def recurrent_width(name: str, model_options: dict[str, Any] | None = None) -> int:
    """The widest recurrent layer of model `name` created with `model_options` (its defaults for
    the rest); 0 for a model that is not `recurrent`."""
    if not recurrent(name):
        return 0
    values = {key: option.default for key, option in options(name).items()}
    values |= model_options or {}
    widths = []
    for key in _WIDTH_OPTIONS:
        value = values.get(key, ())
        widths += value if isinstance(value, tuple | list) else [value]
    return max(widths, default=0)


def takes_lengths(name: str) -> bool:
    """Whether model `name` takes `lengths` of right-padded sequences after its input."""
    return "lengths" in inspect.signature(_lookup(name)[0].__call__).parameters


def names(pattern: str = "*") -> list[str]:
    """The registered model names matching a shell-style `pattern` ("resnet*", "*lstm")."""
    return sorted(fnmatch.filter(_MODELS, pattern))


class Option(NamedTuple):
    """One option of a registered model: its default and its type annotation."""

    default: Any
    type: Any


def options(name: str) -> dict[str, Option]:
    """The options `create(name, ...)` accepts, each with its default and type: the model's
    fields, less those its row fixes and those that only apply to another value of a fixed one
    (`reset_after` for an LSTM)."""
    cls, fixed = _lookup(name)
    hints = typing.get_type_hints(cls)
    defaults = _defaults(name)
    return {
        f.name: Option(defaults.get(f.name, dataclasses.MISSING), hints.get(f.name, f.type))
        for f in dataclasses.fields(cls)
        if f.name not in ("parent", "name") and f.name not in fixed and _applies(f.name, fixed)
    }


def _defaults(name: str) -> dict[str, Any]:
    cls, _ = _lookup(name)
    defaults = {
        f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
    }
    return {**defaults, **_DEFAULTS.get(name, {})}


def create(name: str, **opts) -> nn.Module:
    """Builds the model registered as `name` with the given hyperparameters.

    Lists (a JSON config's tuples), nested ones too, become tuples, so every model is hashable
    and can be a static argument of `jax.jit` (as `sample` takes it).

    Raises:
      ValueError: for an unknown name or option, naming the valid ones and the models an option
        belongs to; for an option that does nothing with the given settings (`reset_after`
        with an LSTM cell); for a value not of the option's annotated type (ints pass as floats,
        lists as tuples, a bool is no int), or a size below 1 (`validate.SIZES`), naming the
        model, option and value; or for a value the model itself refuses.
    """
    valid = options(name)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise ValueError(
            f"model {name!r} has no option {', '.join(_with_owners(o) for o in unknown)}; "
            f"valid options: {', '.join(valid)}"
        )
    for option, value in opts.items():
        check_type(name, option, value, valid[option].type)
    cls, fixed = _lookup(name)
    settings = {**_defaults(name), **fixed, **opts}
    for option in sorted(opts):
        if not _applies(option, settings):
            key, value = _ONLY_WITH[option]
            raise ValueError(
                f"model {name!r} option {option} applies only with {key}={value!r}, "
                f"got {key}={settings[key]!r}"
            )
    row = {**_DEFAULTS.get(name, {}), **fixed, **opts}
    model = cls(**{key: _frozen(value) for key, value in row.items()})  # its own checks first
    for option, value in opts.items():
        check_size(name, option, value)
    return model


def example_input(name: str, batch_size: int = 2, seed: int = 0, **opts) -> jax.Array:
    """A batch that `create(name, **opts)` takes: `(batch_size, *input_shape)` standard normal
    floats, or token ids below the vocabulary's size for a model that embeds them (16 steps, as
    for any axis of free length)."""
    model = create(name, **opts)
    key = jax.random.key(seed)
    if task(name) == "language":
        return jax.random.randint(key, (batch_size, 16), 0, model.num_classes)
    if task(name) == "seq2seq":  # source ids, none of them PAD, BOS or EOS
        return jax.random.randint(key, (batch_size, 16), 3, model.vocab_size)
    vocab_size = getattr(model, "vocab_size", None)
    input_shape = model.input_shape or ((None,) if vocab_size else None)
    if input_shape is None:
        raise ValueError(f"model {name!r} takes inputs of any shape: give input_shape")
    shape = tuple(16 if size is None else size for size in input_shape)
    if vocab_size is not None:
        return jax.random.randint(key, (batch_size, *shape), 0, vocab_size)
    return jax.random.normal(key, (batch_size, *shape))


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
        close = names(f"{name}*") or difflib.get_close_matches(name, names(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; choose from: {', '.join(names())}")
    return _MODELS[name]


__all__ = [
    "CNNLSTM",
    "CharLM",
    "ConvAutoencoder",
    "ConvLSTMClassifier",
    "ConvNet",
    "Forecaster",
    "RNNClassifier",
    "SeedCNN",
    "Seq2Seq",
    "TCN",
    "Tagger",
    "TCNForecaster",
    "LeNet5",
    "MobileNetV2",
    "Option",
    "ResNet",
    "VAE",
    "VAEOutput",
    "VGG",
    "create",
    "example_input",
    "generate",
    "kl_divergence",
    "names",
    "options",
    "reconstruct",
    "beam_search",
    "greedy_decode",
    "sample",
    "task",
]
