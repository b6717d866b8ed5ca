"""Convolutional classifiers: the Keras MNIST CNN and a configurable conv stack.

Every model takes channels-last input `(*batch, *input_shape)` with any number of leading batch axes
(none included, so `jax.vmap` over single examples works) and returns logits `(*batch, classes)`.
Call them the Flax way:

    model = zoo.models.create("cnn")
    variables = model.init(key, x)                 # pure: a pytree of arrays
    logits = model.apply(variables, x)             # eval mode
    logits, updates = model.apply(variables, x, train=True,
                                  rngs={"dropout": key}, mutable=["batch_stats"])
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.layers.conv import ACTIVATIONS, POOLS, Conv, ResidualBlock, activation, max_pool
from zoo.models.inputs import batch_shape, check_input, dtypes, flatten


def _unflatten(logits: jax.Array, x: jax.Array, input_shape: Sequence[int]) -> jax.Array:
    return logits.reshape(*batch_shape(x, input_shape), logits.shape[-1])


class SeedCNN(nn.Module):
    """The Keras MNIST CNN (keras.io, "Simple MNIST convnet" / TF "CNN" tutorial).

    Conv(32, 3x3, relu) - MaxPool(2) - Conv(64, 3x3, relu) - MaxPool(2) - Conv(64, 3x3, relu)
    - Flatten - Dense(64, relu) - Dense(num_classes). 'VALID' convolutions, as in Keras; on 28x28x1
    input that is 93,322 parameters for 10 classes.
    """

    num_classes: int = 10
    input_shape: Sequence[int] = (28, 28, 1)
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        if len(self.input_shape) != 3:
            raise ValueError(
                f"cnn input_shape must be (height, width, channels), got {tuple(self.input_shape)}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train  # no dropout or batch norm; kept so every model has one call signature
        h = check_input(x, self.input_shape, "cnn")  # (B, 28, 28, 1)
        h = nn.relu(Conv(32, (3, 3), padding="VALID", **dtypes(self))(h))  # (B, 26, 26, 32)
        h = max_pool(h, 2)  # (B, 13, 13, 32)
        h = nn.relu(Conv(64, (3, 3), padding="VALID", **dtypes(self))(h))  # (B, 11, 11, 64)
        h = max_pool(h, 2)  # (B, 5, 5, 64)
        h = nn.relu(Conv(64, (3, 3), padding="VALID", **dtypes(self))(h))  # (B, 3, 3, 64)
        h = flatten(h)  # (B, 576)
        h = nn.relu(nn.Dense(64, **dtypes(self))(h))
        logits = nn.Dense(self.num_classes, **dtypes(self))(h)  # (B, classes)
        return _unflatten(logits, x, self.input_shape)


class ConvNet(nn.Module):
    """A configurable Conv1D/Conv2D classifier.

    The rank of `input_shape` picks the convolution: `(T, C)` builds Conv1D stages, `(H, W, C)`
    Conv2D stages. Each stage is `conv [- batch norm] - activation [- pool] [- dropout]`, or with
    `residual=True` a two-convolution `ResidualBlock` in place of the conv. Then flatten, the
    `dense` hidden layers (each followed by dropout) and the logits. Convolutions use 'SAME'
    padding so any stage count fits any input that survives its pooling.

    Attributes:
      input_shape: one example's shape, channels last.
      num_classes: number of logits.
      features: output channels of each stage.
      kernel_size: convolution width along every spatial axis.
      pool: 'max', 'avg' or None (no pooling).
      pool_size: pooling window and stride.
      activation: 'relu', 'tanh', 'sigmoid' or 'gelu'.
      batch_norm: batch norm after each convolution (batch statistics in training, running
        averages in evaluation).
      dropout: drop rate after each stage and hidden dense layer; active only with `train=True`.
      residual: residual blocks instead of single convolutions.
      dense: widths of the hidden dense layers.
      batch_norm_axis: a `pmap` or `shard_map` axis name over which batch norm computes its
        statistics, so they are those of the global batch (zoo's layouts set it); None: this
        call's.
      dtype: of the computation, e.g. `jnp.bfloat16`; None: promoted from inputs and params.
      param_dtype: of the parameters.
    """

    input_shape: Sequence[int]
    num_classes: int = 10
    features: Sequence[int] = (32, 64)
    kernel_size: int = 3
    pool: str | None = "max"
    pool_size: int = 2
    activation: str = "relu"
    batch_norm: bool = False
    dropout: float = 0.0
    residual: bool = False
    dense: Sequence[int] = (64,)
    batch_norm_axis: str | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        if len(self.input_shape) not in (2, 3):
            raise ValueError(
                f"convnet input_shape must be (steps, channels) for Conv1D or (height, width, "
                f"channels) for Conv2D, got {tuple(self.input_shape)}"
            )
        if self.pool is not None and self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; choose from: {', '.join(POOLS)}, None")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; choose from: {', '.join(ACTIVATIONS)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.features or min(self.features) < 1:
            raise ValueError(f"features must be positive channel counts, got {self.features}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        act = activation(self.activation)
        kernel = (self.kernel_size,) * (len(self.input_shape) - 1)
        h = check_input(x, self.input_shape, "convnet")  # (B, *spatial, C)
        for features in self.features:
            if self.residual:
                h = ResidualBlock(
                    features,
                    kernel,
                    self.activation,
                    self.batch_norm,
                    self.batch_norm_axis,
                    **dtypes(self),
                )(h, train=train)
            else:
                h = Conv(
                    features, kernel, padding="SAME", use_bias=not self.batch_norm, **dtypes(self)
                )(h)
                if self.batch_norm:
                    h = nn.BatchNorm(
                        use_running_average=not train,
                        axis_name=self.batch_norm_axis,
                        **dtypes(self),
                    )(h)
                h = act(h)
            if self.pool is not None:
                h = POOLS[self.pool](h, self.pool_size)
            if self.dropout:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = flatten(h)  # (B, features)
        for width in self.dense:
            h = act(nn.Dense(width, **dtypes(self))(h))
            if self.dropout:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
        logits = nn.Dense(self.num_classes, **dtypes(self))(h)  # (B, classes)
        return _unflatten(logits, x, self.input_shape)
