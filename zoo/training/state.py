"""The model for a config, and its train state: params, optimizer state, batch-norm statistics
and the run's PRNG key."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from zoo import models
from zoo.data.splits import Dataset
from zoo.training.config import ConfigError, TrainConfig
from zoo.training.precision import LossScale, initial_loss_scale
from zoo.training.regularizers import regularized


class TrainState(train_state.TrainState):
    """Flax's TrainState plus `batch_stats` (empty without batch norm), a base PRNG `key`, and
    static settings of the train step: the `task` that picks the loss ('classify', 'tag',
    'language', 'regress', 'reconstruct' or 'vae'), the L1/L2 penalty and the augmentations.

    The random numbers of step `s` (dropout, augmentation) come from `jax.random.fold_in(key, s)`:
    a pure function of the state, so a resumed run draws the same ones as an uninterrupted run.
    """

    batch_stats: Any
    key: jax.Array
    skipped_steps: jax.Array  # steps skipped for a non-finite loss or gradient
    bad_streak: jax.Array  # consecutive non-finite steps up to now
    loss_scale: LossScale  # the factor on the loss: dynamic for float16, else 1
    task: str = struct.field(pytree_node=False, default="classify")
    l1: float = struct.field(pytree_node=False, default=0.0)
    l2: float = struct.field(pytree_node=False, default=0.0)
    regularize: str = struct.field(pytree_node=False, default="kernels")
    augment: tuple[str, ...] = struct.field(pytree_node=False, default=())
    max_bad_steps: int = struct.field(pytree_node=False, default=5)
    dynamic_loss_scale: bool = struct.field(pytree_node=False, default=False)


def create_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate as a function of the step, over `config.epochs * steps_per_epoch` steps."""
    total = config.epochs * steps_per_epoch
    lr = config.learning_rate
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=total)
    if config.schedule == "warmup_cosine":
        if config.warmup_steps >= total:
            raise ConfigError(
                f"warmup_steps {config.warmup_steps} must be fewer than the run's {total} steps"
            )
        return optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps, total)
    if config.schedule == "exponential":
        return optax.exponential_decay(
            lr, transition_steps=steps_per_epoch, decay_rate=config.decay_rate
        )
    return optax.constant_schedule(lr)


def create_optimizer(config: TrainConfig, steps_per_epoch: int = 1) -> optax.GradientTransformation:
    """Clipping (optional), the optimizer on the schedule, then decoupled weight decay.

    Weight decay subtracts `lr(t) * decay * w` from the regularized weights after the optimizer's
    own update, so 'adamw' is exactly `optax.adamw` with zoo's kernel mask.
    """
    schedule = create_schedule(config, steps_per_epoch)
    momentum = config.momentum or None
    if config.optimizer in ("adam", "adamw"):
        base = optax.adam(schedule, nesterov=config.nesterov)
    elif config.optimizer == "sgd":
        base = optax.sgd(schedule, momentum=momentum, nesterov=config.nesterov)
    else:
        base = optax.rmsprop(schedule, momentum=momentum, nesterov=config.nesterov)
    parts = [] if config.clip_norm is None else [optax.clip_by_global_norm(config.clip_norm)]
    parts.append(base)
    if config.decay:
        decay = config.decay
        parts.append(
            optax.add_decayed_weights(
                lambda step: -schedule(step) * decay,
                mask=lambda params: regularized(params, config.regularize),
            )
        )
    return optax.chain(*parts)


def create_train_state(
    model: nn.Module,
    config: TrainConfig,
    example: jax.Array,
    task: str = "classify",
    steps_per_epoch: int = 1,
) -> TrainState:
    """Initialises the model on `example`, a batch of inputs, and builds the optimizer (whose
    schedule spans `config.epochs * steps_per_epoch` steps)."""
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    # One compiled init instead of one eager dispatch per initializer: the same values, faster.
    variables = jax.jit(model.init)(init_key, jnp.asarray(example))
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=create_optimizer(config, steps_per_epoch),
        batch_stats=variables.get("batch_stats", {}),
        key=dropout_key,
        skipped_steps=jnp.zeros((), jnp.int32),
        bad_streak=jnp.zeros((), jnp.int32),
        loss_scale=initial_loss_scale(config.dtype == "float16"),
        dynamic_loss_scale=config.dtype == "float16",
        task=task,
        l1=config.l1,
        l2=config.l2,
        regularize=config.regularize,
        augment=config.augment,
        max_bad_steps=config.max_bad_steps,
    )
    return state.replace(step=jnp.zeros((), jnp.int32))  # the dtype every later step has


def build_model(config: TrainConfig, dataset: Dataset) -> nn.Module:
    """`model_for(config, ...)` shaped for `dataset`."""
    vocab_size = len(dataset.vocab) if dataset.vocab else None
    variable_length = dataset.train.lengths is not None
    input_shape = model_input_shape(config.model, dataset.input_shape, variable_length)
    return model_for(config, dataset.num_classes, input_shape, vocab_size)


def model_input_shape(
    model: str, input_shape: tuple[int, ...], variable_length: bool
) -> tuple[int | None, ...]:
    """The input shape `model` is built for from its data's: a model that reads sequences of
    different lengths (with their `lengths`) leaves the time axis open, so it takes any length
    (bucketed batches, a longer sequence to predict, an export with a symbolic length)."""
    if variable_length and models.takes_lengths(model):
        return (None, *tuple(input_shape)[1:])
    return tuple(input_shape)


def model_for(
    config: TrainConfig,
    num_classes: int,
    input_shape: tuple[int, ...],
    vocab_size: int | None = None,
) -> nn.Module:
    """The registry model for `config`, shaped for the data: its input shape (for models that
    fix one), the size of its input vocabulary (for models that embed token ids and have an
    output of their own, as a tagger), and its output width (`num_classes`, or a forecaster's
    `horizon`; none for an autoencoder, whose output is its input's shape), computing in
    `config.dtype` with float32 parameters."""
    accepted = models.options(config.model)
    width = "horizon" if "horizon" in accepted else "num_classes"
    fixed = {width: num_classes} if width in accepted else {}
    if "input_shape" in accepted:
        fixed["input_shape"] = tuple(input_shape)
    if "vocab_size" in accepted and vocab_size is not None:
        fixed["vocab_size"] = vocab_size
    clash = sorted(set(fixed) & set(config.model_options))
    if clash:
        raise ConfigError(f"model_options may not set {', '.join(clash)}: the dataset decides them")
    precision = sorted({"dtype", "param_dtype"} & set(config.model_options))
    if precision:
        raise ConfigError(
            f"model_options may not set {', '.join(precision)}: dtype (--dtype) decides the "
            "computation's, and parameters stay float32"
        )
    dtype = None if config.dtype == "float32" else jnp.dtype(config.dtype)
    return models.create(config.model, **fixed, **config.model_options, dtype=dtype)


def initialize_from(state: TrainState, params: Any, batch_stats: Any) -> tuple[TrainState, list]:
    """`state` with every leaf of `params` and `batch_stats` (a trained model's) whose path and
    shape it shares; returns it and the paths of the leaves left as initialised.

    Raises:
      ConfigError: when the two trees' paths differ (another architecture), listing them.
    """
    new_params, fresh_params = _copy_matching(state.params, params, "params")
    new_stats, fresh_stats = _copy_matching(state.batch_stats, batch_stats, "batch_stats")
    return state.replace(params=new_params, batch_stats=new_stats), fresh_params + fresh_stats


def _copy_matching(target: Any, source: Any, name: str) -> tuple[Any, list[str]]:
    flat = dict(jax.tree_util.tree_flatten_with_path(source)[0])
    leaves, treedef = jax.tree_util.tree_flatten_with_path(target)
    paths = {path for path, _ in leaves}
    differ = sorted(jax.tree_util.keystr(p) for p in paths ^ set(flat))
    if differ:
        shown = ", ".join(differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else "")
        raise ConfigError(
            f"init_from: the trained model's {name} do not match this model's ({len(differ)} "
            f"leaves in only one of them: {shown}); it is another architecture"
        )
    copied, fresh = [], []
    for path, leaf in leaves:
        old = flat[path]
        if old.shape == leaf.shape:
            copied.append(jnp.asarray(old, leaf.dtype))
        else:
            copied.append(leaf)
            fresh.append(f"{name}{jax.tree_util.keystr(path)} {tuple(old.shape)}->{leaf.shape}")
    return jax.tree.unflatten(treedef, copied), fresh
