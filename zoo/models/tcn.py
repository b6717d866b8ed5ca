"""Temporal convolutional networks (Bai, Kolter & Koltun 2018, "An Empirical Evaluation of Generic
Convolutional and Recurrent Networks for Sequence Modeling"): a sequence classifier and a
forecaster, drop-in where `lstm` and `forecast` are.

A stack of residual blocks, level `i` with two dilated causal convolutions of dilation `2**i`,
so the output at step `t` sees only inputs at steps `<= t`, over a receptive field of
`1 + 2 * (kernel_size - 1) * (2**levels - 1)` steps (`receptive_field`). The heads read the last
step, which sees the whole window when the receptive field is at least `steps` long:

    model = zoo.models.create("tcn")                        # digits-seq: (28, 28), 10 classes
    variables = model.init(key, x)                          # x: (B, 28, 28) floats
    logits = model.apply(variables, x)                      # (B, 10)

The paper's weight normalisation is left out (it is optional there).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.layers.conv import Conv
from zoo.models.inputs import batch_shape, check_input, dtypes


def receptive_field(kernel_size: int, levels: int) -> int:
    """Steps of input the last level's output at one step depends on: two convolutions of
    reach `(kernel_size - 1) * 2**i` per level `i`, plus the step itself."""
    return 1 + 2 * (kernel_size - 1) * (2**levels - 1)


def _check_options(
    model: str,
    input_shape: Sequence[int | None],
    channels: Sequence[int],
    kernel_size: int,
    dropout: float,
) -> None:
    if len(input_shape) != 2:
        raise ValueError(f"{model} input_shape must be (steps, features), got {tuple(input_shape)}")
    if not channels or min(channels) < 1:
        raise ValueError(f"channels must be positive channel counts, got {channels}")
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be positive, got {kernel_size}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


class TemporalBlock(nn.Module):
    """One residual level: `relu(x' + dropout(relu(conv2(dropout(relu(conv1(x)))))))`.

    `conv1` and `conv2` are causal convolutions of width `kernel_size` and dilation `dilation`
    (`(kernel_size - 1) * dilation` zeros before the sequence, as the paper's padding and chomp);
    `x'` is `x`, or a 1x1 convolution of it when its channel count is not `features`.
    `(B, T, C)` -> `(B, T, features)`.
    """

    features: int
    kernel_size: int = 3
    dilation: int = 1
    dropout: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        h = x  # (B, T, C)
        for name in ("conv1", "conv2"):  # the names of the paper's PyTorch `TemporalBlock`
            h = Conv(
                self.features,
                (self.kernel_size,),
                padding="CAUSAL",
                kernel_dilation=self.dilation,
                **dtypes(self),
                name=name,
            )(h)
            h = nn.relu(h)  # (B, T, features)
            if self.dropout:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
        shortcut = x
        if x.shape[-1] != self.features:
            shortcut = Conv(self.features, (1,), **dtypes(self), name="downsample")(x)
        return nn.relu(h + shortcut)


class TemporalConvNet(nn.Module):
    """The feature stack: one `TemporalBlock` per entry of `channels`, dilation `2**i`.

    `(B, T, F)` -> `(B, T, channels[-1])`, causal: step `t` of the output depends on input steps
    `t - receptive_field(kernel_size, len(channels)) + 1 .. t` only.
    """

    channels: Sequence[int] = (32, 32, 32)
    kernel_size: int = 3
    dropout: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        h = x
        for level, features in enumerate(self.channels):
            h = TemporalBlock(features, self.kernel_size, 2**level, self.dropout, **dtypes(self))(
                h, train=train
            )  # (B, T, features)
        return h


class TCN(nn.Module):
    """TCN sequence classifier: `TemporalConvNet` over `(B, T, F)`, then a dense layer on the
    last step's features (the paper's sequential MNIST model). Registered as `tcn`.

    The defaults fit digits-seq (the digits as 28 rows of 28 pixels, 10 classes): three levels
    of width 3 see `receptive_field(3, 3) = 29` steps, so the last step sees every row.

    Attributes:
      input_shape: `(steps, features)`; steps may be None for any length.
      num_classes: number of logits.
      channels: output channels of each level; level `i` has dilation `2**i`.
      kernel_size: width of every convolution.
      dropout: after each convolution's activation, in training only.
      dtype: of the computation, e.g. `jnp.bfloat16`; None: promoted from inputs and params.
      param_dtype: of the parameters.
    """

    input_shape: Sequence[int | None] = (28, 28)
    num_classes: int = 10
    channels: Sequence[int] = (32, 32, 32)
    kernel_size: int = 3
    dropout: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _check_options("tcn", self.input_shape, self.channels, self.kernel_size, self.dropout)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        h = check_input(x, self.input_shape, "tcn")  # (B, T, F)
        h = TemporalConvNet(self.channels, self.kernel_size, self.dropout, **dtypes(self))(
            h, train=train
        )  # (B, T, channels[-1])
        logits = nn.Dense(self.num_classes, **dtypes(self))(h[:, -1])  # (B, classes)
        return logits.reshape(*batch_shape(x, self.input_shape), self.num_classes)


class TCNForecaster(nn.Module):
    """TCN regressor: a window `(B, T, F)` -> the next `horizon` values `(B, horizon)`, from the
    last step's features. Registered as `tcn_forecast`.

    As `forecast`, it predicts the change from the window's last value of feature 0 (a zero
    initialised head on the naive forecast), so an untrained model starts at the naive forecast.
    The defaults fit the series dataset's 24-step windows (receptive field 29).

    Attributes:
      input_shape: `(steps, features)`; steps may be None for any length.
      horizon: number of future values.
      channels, kernel_size, dropout, dtype, param_dtype: as for `TCN`.
    """

    input_shape: Sequence[int | None] = (24, 1)
    horizon: int = 1
    channels: Sequence[int] = (32, 32, 32)
    kernel_size: int = 3
    dropout: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _check_options(
            "tcn_forecast", self.input_shape, self.channels, self.kernel_size, self.dropout
        )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        window = check_input(x, self.input_shape, "tcn_forecast")  # (B, T, F)
        h = TemporalConvNet(self.channels, self.kernel_size, self.dropout, **dtypes(self))(
            window, train=train
        )  # (B, T, channels[-1])
        delta = nn.Dense(self.horizon, kernel_init=nn.initializers.zeros, **dtypes(self))(
            h[:, -1]
        )  # (B, horizon)
        return (delta + window[:, -1, :1]).reshape(*batch_shape(x, self.input_shape), self.horizon)
