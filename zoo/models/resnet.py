"""ResNets (He et al. 2016): the ImageNet family (18, 34, 50, 101, 152) and the CIFAR paper's
6n+2 family (20, 32, 44, 56, 110), one module and a size table.

Conventions are torchvision's ("ResNet v1.5"): no convolution biases, a bottleneck's stride on
its 3x3 convolution, the stem's 7x7 stride-2 convolution padded 3 pixels each side and its 3x3
stride-2 max pool 1 each side, batch norm epsilon 1e-5. ResNet-50 then has 25,557,032 parameters
at 224x224x3 and 1000 classes. `keras_layout=True` gives Keras' `applications.ResNet50` instead:
biases on every convolution, the bottleneck's stride on its first 1x1 and epsilon 1.001e-5
(25,636,712 values with batch norm's running statistics, as Keras counts them), so its weights
import unchanged.

The CIFAR stem is one 3x3 convolution, stride 1, no pooling, for 32x32 inputs. The CIFAR paper's
networks (`width=16`, three stages) use `shortcut="pad"`, its option A: a strided identity with
zero channels appended, no parameters.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.layers import importers
from zoo.layers.blocks import ConvNorm
from zoo.layers.conv import global_avg_pool, max_pool
from zoo.models.inputs import batch_shape, check_input, dtypes

# depth: (block, blocks per stage). Stage i has width * 2**i channels (4x that out of a bottleneck).
SIZES: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    20: ("basic", (3, 3, 3)),
    32: ("basic", (5, 5, 5)),
    44: ("basic", (7, 7, 7)),
    56: ("basic", (9, 9, 9)),
    110: ("basic", (18, 18, 18)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}


class ResNet(nn.Module):
    """A residual network classifier for `(*batch, H, W, C)` images.

    Attributes:
      depth: a key of `SIZES`.
      num_classes: number of logits.
      input_shape: one image, `(H, W, C)`.
      stem: 'imagenet' (7x7/2 convolution, 3x3/2 max pool) or 'cifar' (3x3/1 convolution).
      width: channels of the first stage (64 for ImageNet ResNets, 16 in the CIFAR paper).
      shortcut: 'projection' (1x1 convolution and batch norm where the shape changes) or 'pad'.
      include_top: logits; False returns the pooled features `(*batch, channels)`.
      keras_layout: Keras' `applications.ResNet50` layout (see the module docstring).
      batch_norm_axis: a `pmap` or `shard_map` axis to take batch statistics over.
    """

    depth: int = 50
    num_classes: int = 1000
    input_shape: Sequence[int] = (224, 224, 3)
    stem: str = "imagenet"
    width: int = 64
    shortcut: str = "projection"
    include_top: bool = True
    keras_layout: bool = False
    batch_norm_axis: str | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        if self.depth not in SIZES:
            raise ValueError(f"resnet depth must be one of {sorted(SIZES)}, got {self.depth}")
        if len(self.input_shape) != 3:
            raise ValueError(
                f"resnet input_shape must be (height, width, channels), got {self.input_shape}"
            )
        for option, value, choices in [
            ("stem", self.stem, ("imagenet", "cifar")),
            ("shortcut", self.shortcut, ("projection", "pad")),
        ]:
            if value not in choices:
                raise ValueError(f"resnet {option} must be one of {choices}, got {value!r}")
        if self.width < 1:
            raise ValueError(f"resnet width must be positive, got {self.width}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        layout = {
            "keras_layout": self.keras_layout,
            "batch_norm_axis": self.batch_norm_axis,
            **dtypes(self),
        }
        h = check_input(x, self.input_shape, f"resnet{self.depth}")  # (B, H, W, C)
        if self.stem == "imagenet":
            h = _conv_norm(self.width, (7, 7), 2, 3, name="stem", **layout)(h, train=train)
            h = max_pool(h, 3, 2, [(1, 1), (1, 1)])  # (B, H/4, W/4, width)
        else:
            h = _conv_norm(self.width, (3, 3), name="stem", **layout)(h, train=train)
        block, stages = SIZES[self.depth]
        for stage, blocks in enumerate(stages):
            for index in range(blocks):
                h = ResidualBlock(
                    block,
                    self.width * 2**stage,
                    strides=2 if stage > 0 and index == 0 else 1,
                    shortcut=self.shortcut,
                    name=f"stage{stage}_block{index}",
                    **layout,
                )(h, train=train)
        features = global_avg_pool(h)  # (B, channels)
        if self.include_top:
            features = nn.Dense(self.num_classes, name="head", **dtypes(self))(features)
        return features.reshape(*batch_shape(x, self.input_shape), features.shape[-1])


def _conv_norm(
    features, kernel, strides=1, padding="SAME", activation=nn.relu, *, keras_layout, **kwargs
) -> ConvNorm:
    return ConvNorm(
        features,
        kernel,
        strides,
        padding,
        activation=activation,
        use_bias=keras_layout,
        batch_norm_epsilon=1.001e-5 if keras_layout else 1e-5,
        **kwargs,
    )


class ResidualBlock(nn.Module):
    """A basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1 to 4x the width) residual block."""

    block: str
    width: int
    strides: int = 1
    shortcut: str = "projection"
    keras_layout: bool = False
    batch_norm_axis: str | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        layout = {
            "keras_layout": self.keras_layout,
            "batch_norm_axis": self.batch_norm_axis,
            **dtypes(self),
        }
        width, strides = self.width, self.strides
        out = width * EXPANSION[self.block]
        if self.block == "basic":
            y = _conv_norm(width, (3, 3), strides, 1, name="conv1", **layout)(x, train=train)
            y = _conv_norm(out, (3, 3), 1, 1, activation=None, name="conv2", **layout)(
                y, train=train
            )
        else:
            first, middle = (strides, 1) if self.keras_layout else (1, strides)
            y = _conv_norm(width, (1, 1), first, name="conv1", **layout)(x, train=train)
            y = _conv_norm(width, (3, 3), middle, 1, name="conv2", **layout)(y, train=train)
            y = _conv_norm(out, (1, 1), activation=None, name="conv3", **layout)(y, train=train)
        shortcut = x
        if strides != 1 or x.shape[-1] != out:
            if self.shortcut == "projection":
                shortcut = _conv_norm(
                    out, (1, 1), strides, activation=None, name="shortcut", **layout
                )(x, train=train)
            else:  # option A: subsample, then zero channels on both sides
                shortcut = x[:, ::strides, ::strides, :]
                extra = out - x.shape[-1]
                shortcut = jnp.pad(shortcut, [(0, 0)] * 3 + [(extra // 2, extra - extra // 2)])
        return nn.relu(y + shortcut)


def _check_keras_layout(model: ResNet, importer: str) -> None:
    block, _ = SIZES[model.depth]
    stems = ("imagenet", "cifar") if importer == "from_torch" else ("imagenet",)
    if model.stem not in stems or model.shortcut != "projection":
        kinds = " or ".join(f"{stem!r}" for stem in stems)
        raise ValueError(f"{importer} reads ResNets with the {kinds} stem and projection shortcuts")
    if importer == "from_keras" and (block != "bottleneck" or not model.keras_layout):
        raise ValueError(
            "Keras' applications.ResNet50/101/152 import into ResNet(depth=50|101|152, "
            "keras_layout=True)"
        )


def from_keras(model: ResNet, weights: dict[str, list]) -> dict:
    """Variables of `model` from a Keras `applications.ResNet50` (101, 152) of the same depth,
    given as `zoo.layers.importers.keras_weights(keras_model)`."""
    _check_keras_layout(model, "from_keras")
    variables = importers.Variables()
    importers.put_keras_conv_norm(variables, "stem", weights["conv1_conv"], weights["conv1_bn"])
    for stage, blocks in enumerate(SIZES[model.depth][1]):
        for index in range(blocks):
            keras = f"conv{stage + 2}_block{index + 1}"
            path = f"stage{stage}_block{index}"
            for k in (1, 2, 3):
                importers.put_keras_conv_norm(
                    variables,
                    f"{path}/conv{k}",
                    weights[f"{keras}_{k}_conv"],
                    weights[f"{keras}_{k}_bn"],
                )
            if index == 0:
                importers.put_keras_conv_norm(
                    variables,
                    f"{path}/shortcut",
                    weights[f"{keras}_0_conv"],
                    weights[f"{keras}_0_bn"],
                )
    if model.include_top:
        kernel, bias = weights["predictions"]
        variables.put("params", "head", {"kernel": kernel, "bias": bias})
    return dict(variables)


def from_torch(model: ResNet, state_dict: dict) -> dict:
    """Variables of `model` from the `state_dict` of a torchvision-layout ResNet of the same depth
    (`conv1`, `bn1`, `layer{1..4}.{i}.conv1/bn1/...`, `downsample.0/1`, `fc`); with
    `stem="cifar"`, its `conv1` is the 3x3 stride-1 convolution and no max pool follows."""
    _check_keras_layout(model, "from_torch")
    if model.keras_layout:
        raise ValueError("torchvision ResNets import into ResNet(keras_layout=False)")
    variables = importers.Variables()
    importers.put_torch_conv_norm(variables, "stem", state_dict, "conv1", "bn1")
    block, stages = SIZES[model.depth]
    convs = 2 if block == "basic" else 3
    for stage, blocks in enumerate(stages):
        for index in range(blocks):
            torch, path = f"layer{stage + 1}.{index}", f"stage{stage}_block{index}"
            for k in range(1, convs + 1):
                importers.put_torch_conv_norm(
                    variables, f"{path}/conv{k}", state_dict, f"{torch}.conv{k}", f"{torch}.bn{k}"
                )
            if f"{torch}.downsample.0.weight" in state_dict:
                importers.put_torch_conv_norm(
                    variables,
                    f"{path}/shortcut",
                    state_dict,
                    f"{torch}.downsample.0",
                    f"{torch}.downsample.1",
                )
    if model.include_top:
        variables.put(
            "params",
            "head",
            importers.dense_from_torch(state_dict["fc.weight"], state_dict["fc.bias"]),
        )
    return dict(variables)
