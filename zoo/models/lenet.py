"""LeNet-5 (LeCun et al. 1998) on 32x32 images, as published up to two simplifications.

C1 6@5x5 - S2 pool 2 - C3 16@5x5 - S4 pool 2 - C5 120@5x5 - F6 84 - output, with tanh and
average pooling (61,706 parameters for 10 classes), or `activation='relu', pool='max'` as most
reimplementations train it today. The paper's scaled tanh, trainable subsampling coefficients,
partial C3 connections and RBF output are plain tanh, average pooling, full connections and a
dense layer of logits. Smaller images (the 28x28 MNIST digits) are zero-padded to 32x32, as the
paper padded MNIST; larger ones keep their size.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.layers.conv import POOLS, Conv, activation
from zoo.models.inputs import batch_shape, check_input, dtypes, flatten


class LeNet5(nn.Module):
    """LeNet-5 for `(*batch, H, W, C)` images.

    Attributes:
      num_classes: number of logits.
      input_shape: one image, `(H, W, C)`; padded to at least 32x32.
      activation: 'tanh' (published) or 'relu', 'sigmoid', 'gelu'.
      pool: 'avg' (published) or 'max'.
      include_top: logits; False returns F6's 84 features.
    """

    num_classes: int = 10
    input_shape: Sequence[int] = (32, 32, 1)
    activation: str = "tanh"
    pool: str = "avg"
    include_top: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        if len(self.input_shape) != 3:
            raise ValueError(
                f"lenet5 input_shape must be (height, width, channels), got {self.input_shape}"
            )
        activation(self.activation)
        if self.pool not in POOLS:
            raise ValueError(f"lenet5 pool must be one of {tuple(POOLS)}, got {self.pool!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train  # no dropout or batch norm
        act, pool = activation(self.activation), POOLS[self.pool]
        h = check_input(x, self.input_shape, "lenet5")  # (B, H, W, C)
        grow = [max(32 - size, 0) for size in h.shape[1:3]]
        h = jnp.pad(h, [(0, 0), *((g // 2, g - g // 2) for g in grow), (0, 0)])  # (B, 32, 32, C)
        h = pool(act(Conv(6, (5, 5), name="c1", **dtypes(self))(h)), 2)  # (B, 14, 14, 6)
        h = pool(act(Conv(16, (5, 5), name="c3", **dtypes(self))(h)), 2)  # (B, 5, 5, 16)
        h = act(Conv(120, (5, 5), name="c5", **dtypes(self))(h))  # (B, 1, 1, 120)
        h = flatten(h)
        h = act(nn.Dense(84, name="f6", **dtypes(self))(h))  # (B, 84)
        if self.include_top:
            h = nn.Dense(self.num_classes, name="head", **dtypes(self))(h)
        return h.reshape(*batch_shape(x, self.input_shape), h.shape[-1])
