"""The train state: params, optimizer state, batch-norm statistics and the run's PRNG key."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from zoo.training.config import TrainConfig

Params = Any  # a pytree of arrays


class TrainState(train_state.TrainState):
    """Flax's TrainState plus `batch_stats` (empty without batch norm), a base PRNG `key` and the
    static `task` that picks the loss ('classify', 'language' or 'regress').

    The dropout key of step `s` is `jax.random.fold_in(key, s)`: a pure function of the state, so
    a resumed run draws the same masks as an uninterrupted one.
    """

    batch_stats: Any
    key: jax.Array
    task: str = struct.field(pytree_node=False, default="classify")


def create_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    if config.optimizer == "adam":
        return optax.adam(config.learning_rate)
    if config.optimizer == "sgd":
        return optax.sgd(config.learning_rate, momentum=config.momentum or None)
    if config.optimizer == "rmsprop":
        return optax.rmsprop(config.learning_rate, momentum=config.momentum)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def create_train_state(
    model: nn.Module,
    config: TrainConfig,
    example: jax.Array,
    task: str = "classify",
) -> TrainState:
    """Initialises the model on `example`, a batch of inputs, and builds the optimizer."""
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    variables = model.init(init_key, jnp.asarray(example))
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=create_optimizer(config),
        batch_stats=variables.get("batch_stats", {}),
        key=dropout_key,
        task=task,
    )
