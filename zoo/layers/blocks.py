"""Building blocks of the CNN families: a convolution with its batch norm and activation."""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.layers.conv import Conv, Padding

# Running averages move by 10% a step (PyTorch's momentum 0.1): Flax's and Keras' 0.99 leave
# them far from the data after the few hundred steps a run on the bundled digits takes.
BATCH_NORM_MOMENTUM = 0.9


class ConvNorm(nn.Module):
    """`conv - batch norm - activation`, the unit every CNN family is built of.

    Batch norm uses batch statistics in training and the running averages in evaluation;
    `batch_norm_axis` names a `jax.pmap` axis to take the statistics over every device's shard.
    With `batch_norm=False` the convolution has a bias instead (VGG without batch norm).

    Attributes:
      features, kernel_size, strides, padding, groups: as `zoo.layers.conv.Conv`.
      activation: applied last; None for none (the projection of an inverted residual).
      use_bias: a bias on the convolution even before batch norm (Keras' ResNet50); None: only
        without batch norm.
    """

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Padding = "SAME"
    groups: int = 1
    activation: Callable[[jax.Array], jax.Array] | None = nn.relu
    batch_norm: bool = True
    use_bias: bool | None = None
    batch_norm_epsilon: float = 1e-5
    batch_norm_axis: str | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        use_bias = not self.batch_norm if self.use_bias is None else self.use_bias
        y = Conv(
            self.features,
            self.kernel_size,
            self.strides,
            self.padding,
            feature_group_count=self.groups,
            use_bias=use_bias,
            name="conv",
            **dtypes,
        )(x)
        if self.batch_norm:
            y = nn.BatchNorm(
                use_running_average=not train,
                momentum=BATCH_NORM_MOMENTUM,
                epsilon=self.batch_norm_epsilon,
                axis_name=self.batch_norm_axis,
                name="bn",
                **dtypes,
            )(y)
        return y if self.activation is None else self.activation(y)
