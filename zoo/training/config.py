"""The typed training configuration and its validation."""

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from zoo.data import MISSING, SOURCES, DataError, check_source
from zoo.data.augment import AUGMENTATIONS

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "exponential")
# Schedules that decay over the whole run (`epochs * steps_per_epoch` steps): a run trained on
# one cannot be extended to more epochs and match a run trained for those from the start.
RUN_LENGTH_SCHEDULES = ("cosine", "warmup_cosine")
REGULARIZE = ("kernels", "all")
# How a dataset is read (`zoo.data.load`'s keyword options): the config fields that say it.
DATA_FIELDS = ("image_size", "channels", "skip_bad_files", "column", "time_column", "missing")
DTYPES = ("float32", "bfloat16", "float16")  # of the computation; params stay float32
# Validation metrics early stopping and search can watch; False: lower is better.
MONITORS = {
    "val_loss": False,
    "val_accuracy": True,
    "val_macro_f1": True,
    "val_bpc": False,
    "val_mse": False,
    "val_elbo": True,
    "val_exact_match": True,
}

# Each model's default dataset and the settings measured to train it well there (README figures).
PRESETS: dict[str, dict[str, Any]] = {
    "cnn": {
        "dataset": "digits",
        "epochs": 100,
        "augment": ("shift", "rotate", "noise"),
        "patience": 15,
    },
    "convnet": {"dataset": "digits"},
    "rnn": {"dataset": "digits-seq", "epochs": 25},
    "birnn": {"dataset": "digits-seq", "epochs": 25},
    "lstm": {"dataset": "digits-seq", "epochs": 25},
    "gru": {"dataset": "digits-seq", "epochs": 25},
    "bilstm": {"dataset": "digits-seq", "epochs": 25},
    "bigru": {"dataset": "digits-seq", "epochs": 25},
    "cnn_lstm": {"dataset": "digits-strips", "epochs": 25},
    "convlstm": {
        "dataset": "digits-moving",
        "epochs": 20,
        "learning_rate": 3e-3,
        "schedule": "cosine",
        "model_options": {"filters": (32,)},
    },
    "charlm": {
        "dataset": "text",
        "epochs": 10,
        "batch_size": 64,
        "learning_rate": 5e-3,
        "schedule": "cosine",
        "model_options": {"hidden_sizes": (256,)},
    },
    "tagger": {
        "dataset": "words",
        "epochs": 10,
        "learning_rate": 3e-3,
        "schedule": "cosine",
        "model_options": {"hidden_sizes": (64,)},
    },
    "forecast": {"dataset": "series", "epochs": 10, "batch_size": 16},
    # Integers to words; 1 epoch already reaches 1.0 exact match on the held-out integers, the
    # second and the cosine decay get the rare short numbers (0..99) right too.
    "seq2seq": {
        "dataset": "numbers",
        "epochs": 2,
        "batch_size": 128,
        "learning_rate": 3e-3,
        "schedule": "cosine",
    },
    "tcn": {
        "dataset": "digits-seq",
        "epochs": 40,
        "schedule": "cosine",
        "model_options": {"channels": (64, 64, 64), "dropout": 0.2},
    },
    "tcn_forecast": {"dataset": "series", "epochs": 10, "batch_size": 16},
    # The CNN families on the digits at 28x28x1 (the input shape is the data's).
    **dict.fromkeys(
        ["lenet5", "lenet5_relu", "resnet18", "resnet34", "resnet50", "resnet20", "mobilenet_v2"],
        {"dataset": "digits", "epochs": 20, "schedule": "cosine"},
    ),
    # VGG at a quarter of its width (16 to 128 channels, dense 256): at full width a digits epoch
    # took 3 minutes on a 2-core CPU (vgg11_bn, 2026-12-04). Without batch norm, the plain stack
    # of 8 or 13 convolutions needs a warmup: vgg16 at Adam 1e-3 without one stayed at chance.
    **dict.fromkeys(
        ["vgg11", "vgg16"],
        {
            "dataset": "digits",
            "epochs": 15,
            "schedule": "warmup_cosine",
            "warmup_steps": 300,
            "model_options": {"width": 16, "dense": (256, 256)},
        },
    ),
    **dict.fromkeys(
        ["vgg11_bn", "vgg16_bn"],
        {
            "dataset": "digits",
            "epochs": 15,
            "schedule": "cosine",
            "model_options": {"width": 16, "dense": (256, 256)},
        },
    ),
    # The digits' pixels, their labels unused.
    "autoencoder": {"dataset": "digits", "epochs": 40, "learning_rate": 2e-3, "schedule": "cosine"},
    "vae": {"dataset": "digits", "epochs": 40, "learning_rate": 2e-3, "schedule": "cosine"},
}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on.

    Attributes:
      model: a name from `zoo.models.names()`.
      model_options: extra hyperparameters passed to `zoo.models.create`.
      dataset: a name from `zoo.data.DATASETS`, or any name for a `Dataset` passed to
        `train_and_evaluate`.
      data_path: the file or folder of a dataset that reads one (`zoo.data.SOURCES`): an image
        folder, a text or CSV file, an `.npz` or `.jsonl` of arrays, MNIST files.
      image_size: `(height, width)` the images of an image folder are resized to; None: their
        own size.
      channels: 1 (grayscale) or 3 (RGB) for an image folder; None: what the images are.
      skip_bad_files: skip (and count) unreadable images instead of stopping.
      column: the CSV column to forecast; None: the only one besides `time_column`.
      time_column: the CSV column rows are sorted by; None: the file's order.
      missing: what empty or NaN CSV cells do: 'error', 'interpolate', 'ffill' or 'drop';
        None: 'error'.
      bucket_by_length: train on batches of sequences of similar length, each cut to its
        longest (`zoo.data.batching`); for datasets whose sequences have `lengths`.
      epochs: passes over the training split (at most, with early stopping).
      batch_size: examples per step.
      optimizer: 'adam', 'adamw' (Adam with decoupled weight decay), 'sgd' or 'rmsprop'.
      learning_rate: the optimizer's (peak) step size.
      momentum: for 'sgd' and 'rmsprop'.
      nesterov: Nesterov momentum for 'sgd' and 'rmsprop'.
      schedule: 'constant', 'cosine' (to zero over the run), 'warmup_cosine' (linear warmup over
        `warmup_steps`, then cosine to zero) or 'exponential' (times `decay_rate` per epoch).
      warmup_steps: the warmup of 'warmup_cosine'.
      decay_rate: the per-epoch factor of 'exponential'.
      clip_norm: clip gradients to this global norm; None: no clipping.
      l1, l2: penalties `l1 * sum|w|` and `l2 * sum(w**2)` added to the loss (Keras' convention).
      weight_decay: decoupled weight decay (`w -= lr * weight_decay * w`, after the optimizer's
        update); None: 1e-4 for 'adamw' and 0 for the others.
      regularize: which weights `l1`, `l2` and `weight_decay` touch: 'kernels' (dense, conv and
        recurrent kernels; not biases, norm scales or embeddings) or 'all'.
      augment: image augmentations run inside the train step, from 'flip', 'rotate', 'shift',
        'noise'.
      patience: stop after this many epochs without a `min_delta` improvement of `monitor`, and
        keep the best epoch's parameters; None (or 0, stored as None): train every epoch.
      min_delta: the smallest change of `monitor` that counts as an improvement.
      monitor: the validation metric early stopping watches; None: 'val_accuracy' for
        classifiers, 'val_loss' otherwise.
      max_bad_steps: a step with a non-finite loss or gradient is skipped; this many in a row
        stop the run.
      checkpoint_every: save a checkpoint every this many steps, besides the end of every
        epoch; None: at epoch ends only.
      keep_checkpoints: how many of the latest checkpoints to keep (the best by `monitor` is
        kept besides them).
      seed: fixes the data split, data order, initialisation, dropout and augmentation.
      dtype: the computation's dtype, 'float32', 'bfloat16' or 'float16'. Parameters, optimizer
        state and the loss stay float32; 'float16' adds dynamic loss scaling.
      init_from: a run directory whose trained parameters start this run (fine-tuning), or
        'pretrained' for the weights shipped for `model` (`zoo.pretrained`): every parameter
        of the same path and shape is copied, the others (a head for another number of
        classes) keep their fresh initialisation. None: start from scratch.
    """

    model: str = "cnn"
    model_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = "digits"
    data_path: str | None = None
    image_size: tuple[int, ...] | None = None
    channels: int | None = None
    skip_bad_files: bool | None = None
    column: str | None = None
    time_column: str | None = None
    missing: str | None = None
    bucket_by_length: bool = False
    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_rate: float = 0.9
    clip_norm: float | None = None
    l1: float = 0.0
    l2: float = 0.0
    weight_decay: float | None = None
    regularize: str = "kernels"
    augment: tuple[str, ...] = ()
    patience: int | None = None
    min_delta: float = 0.0
    monitor: str | None = None
    max_bad_steps: int = 5
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    seed: int = 0
    dtype: str = "float32"
    init_from: str | None = None

    def __post_init__(self):
        for name in ("augment", "image_size"):  # lists, as read back from JSON
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for field in dataclasses.fields(self):
            _check_type(field.name, getattr(self, field.name), field.type)
        _check(self.epochs >= 1, "epochs", "must be >= 1", self.epochs)
        _check(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)
        _check(
            0 < self.learning_rate < math.inf, "learning_rate", "must be > 0", self.learning_rate
        )
        _check(0 <= self.momentum < 1, "momentum", "must be in [0, 1)", self.momentum)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("regularize", self.regularize, REGULARIZE)
        _check_choice("dtype", self.dtype, DTYPES)
        if self.image_size is not None:
            _check(
                len(self.image_size) == 2
                and all(
                    isinstance(n, int) and not isinstance(n, bool) and n >= 1
                    for n in self.image_size
                ),
                "image_size",
                "must be two positive integers (height, width)",
                self.image_size,
            )
        if self.channels is not None:
            _check(self.channels in (1, 3), "channels", "must be 1 or 3", self.channels)
        if self.missing is not None:
            _check_choice("missing", self.missing, MISSING)
        try:  # another name labels arrays given to train_and_evaluate(dataset=...)
            if self.dataset in SOURCES:
                check_source(self.dataset, self.data_path, **self.data_options())
        except DataError as error:
            raise ConfigError(str(error)) from None
        if self.schedule == "warmup_cosine":
            _check(
                self.warmup_steps >= 1,
                "warmup_steps",
                "must be >= 1 with schedule 'warmup_cosine'",
                self.warmup_steps,
            )
        else:
            _check(
                self.warmup_steps == 0,
                "warmup_steps",
                "is only used by schedule 'warmup_cosine'",
                self.warmup_steps,
            )
        _check(0 < self.decay_rate <= 1, "decay_rate", "must be in (0, 1]", self.decay_rate)
        if self.clip_norm is not None:
            _check(0 < self.clip_norm < math.inf, "clip_norm", "must be > 0", self.clip_norm)
        for name in ("l1", "l2", "weight_decay", "min_delta"):
            value = getattr(self, name)
            if value is not None:
                _check(0 <= value < math.inf, name, "must be >= 0", value)
        for name in self.augment:
            _check_choice("augment", name, tuple(AUGMENTATIONS))
        _check(
            len(set(self.augment)) == len(self.augment),
            "augment",
            "lists a name twice",
            self.augment,
        )
        if self.patience is not None:
            _check(
                self.patience >= 0, "patience", "must be >= 0 (0: no early stopping)", self.patience
            )
            if self.patience == 0:  # one spelling of "off", so configs compare equal
                object.__setattr__(self, "patience", None)
        _check(self.max_bad_steps >= 1, "max_bad_steps", "must be >= 1", self.max_bad_steps)
        if self.checkpoint_every is not None:
            _check(
                self.checkpoint_every >= 1,
                "checkpoint_every",
                "must be >= 1",
                self.checkpoint_every,
            )
        _check(
            self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1", self.keep_checkpoints
        )
        if self.monitor is not None:
            _check_choice("monitor", self.monitor, tuple(MONITORS))

    def data_options(self) -> dict[str, Any]:
        """The dataset's own options that were given (`zoo.data.load`'s keyword options)."""
        return {
            name: getattr(self, name) for name in DATA_FIELDS if getattr(self, name) is not None
        }

    @property
    def decay(self) -> float:
        """The decoupled weight decay in effect."""
        if self.weight_decay is not None:
            return self.weight_decay
        return 1e-4 if self.optimizer == "adamw" else 0.0

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


def _check(ok: bool, name: str, requirement: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{name} {requirement}, got {value!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, name, f"must be one of {', '.join(choices)}", value)


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
