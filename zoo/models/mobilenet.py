"""MobileNetV2 (Sandler et al. 2018): inverted residuals of depthwise separable convolutions.

The layout is Keras' `applications.MobileNetV2`: 'SAME' padding (for a stride-2 3x3 that is one
pixel after an even map, Keras' `correct_pad`), ReLU6, batch norm epsilon 1e-3, no convolution
biases, channels rounded to multiples of 8, a 1280-wide last convolution (wider for `alpha > 1`)
and global average pooling: 3,538,984 values at 224x224x3 and 1000 classes with batch norm's
running statistics (Keras' count), 3,504,872 parameters (torchvision's count).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.layers import importers
from zoo.layers.blocks import ConvNorm
from zoo.layers.conv import global_avg_pool
from zoo.models.inputs import batch_shape, check_input, dtypes

# (expansion, output channels, blocks, stride of the first block)
BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """The nearest multiple of `divisor`, at least `divisor`, never 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class MobileNetV2(nn.Module):
    """MobileNetV2 for `(*batch, H, W, C)` images.

    Attributes:
      num_classes: number of logits.
      input_shape: one image, `(H, W, C)`.
      alpha: width multiplier of every layer (0.35 to 1.4 in the paper).
      dropout: drop rate before the logits, in training only (Keras: none; torchvision: 0.2).
      include_top: logits; False returns the pooled features `(*batch, 1280)`.
      batch_norm_axis: a `pmap` or `shard_map` axis to take batch statistics over.
    """

    num_classes: int = 1000
    input_shape: Sequence[int] = (224, 224, 3)
    alpha: float = 1.0
    dropout: float = 0.0
    include_top: bool = True
    batch_norm_axis: str | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        if len(self.input_shape) != 3:
            raise ValueError(
                f"mobilenet_v2 input_shape must be (height, width, channels), got "
                f"{self.input_shape}"
            )
        if self.alpha <= 0:
            raise ValueError(f"mobilenet_v2 alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"mobilenet_v2 dropout must be in [0, 1), got {self.dropout}")
        super().__post_init__()

    def _conv(self, features, kernel, strides=1, groups=1, activation=nn.relu6, name=None):
        return ConvNorm(
            features,
            kernel,
            strides,
            groups=groups,
            activation=activation,
            batch_norm_epsilon=1e-3,
            batch_norm_axis=self.batch_norm_axis,
            name=name,
            **dtypes(self),
        )

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        h = check_input(x, self.input_shape, "mobilenet_v2")  # (B, H, W, C)
        h = self._conv(make_divisible(32 * self.alpha), (3, 3), 2, name="stem")(h, train=train)
        index = 0
        for expansion, channels, blocks, first_stride in BLOCKS:
            out = make_divisible(channels * self.alpha)
            for repeat in range(blocks):
                strides = first_stride if repeat == 0 else 1
                y = h
                name = f"block{index}"
                if expansion != 1:
                    expanded = h.shape[-1] * expansion
                    y = self._conv(expanded, (1, 1), name=f"{name}_expand")(y, train=train)
                y = self._conv(y.shape[-1], (3, 3), strides, y.shape[-1], name=f"{name}_depthwise")(
                    y, train=train
                )
                y = self._conv(out, (1, 1), activation=None, name=f"{name}_project")(y, train=train)
                h = h + y if strides == 1 and h.shape[-1] == out else y
                index += 1
        last = make_divisible(1280 * self.alpha) if self.alpha > 1.0 else 1280
        h = self._conv(last, (1, 1), name="top")(h, train=train)  # (B, H/32, W/32, last)
        features = global_avg_pool(h)
        if self.include_top:
            features = nn.Dropout(self.dropout, deterministic=not train)(features)
            features = nn.Dense(self.num_classes, name="head", **dtypes(self))(features)
        return features.reshape(*batch_shape(x, self.input_shape), features.shape[-1])


def from_keras(model: MobileNetV2, weights: dict[str, list]) -> dict:
    """Variables of `model` from a Keras `applications.MobileNetV2` of the same `alpha`, given
    as `zoo.layers.importers.keras_weights(keras_model)`."""
    variables = importers.Variables()
    importers.put_keras_conv_norm(variables, "stem", weights["Conv1"], weights["bn_Conv1"])
    index = 0
    for expansion, _, blocks, _ in BLOCKS:
        for _ in range(blocks):
            keras = f"block_{index}_" if index else "expanded_conv_"
            if expansion != 1:
                importers.put_keras_conv_norm(
                    variables,
                    f"block{index}_expand",
                    weights[f"{keras}expand"],
                    weights[f"{keras}expand_BN"],
                )
            importers.put_keras_conv_norm(
                variables,
                f"block{index}_depthwise",
                weights[f"{keras}depthwise"],
                weights[f"{keras}depthwise_BN"],
                depthwise=True,
            )
            importers.put_keras_conv_norm(
                variables,
                f"block{index}_project",
                weights[f"{keras}project"],
                weights[f"{keras}project_BN"],
            )
            index += 1
    importers.put_keras_conv_norm(variables, "top", weights["Conv_1"], weights["Conv_1_bn"])
    if model.include_top:
        kernel, bias = weights["predictions"]
        variables.put("params", "head", {"kernel": kernel, "bias": bias})
    return dict(variables)
