"""VGG (Simonyan & Zisserman 2015), with or without batch norm, as a size table.

Layouts are Keras' `applications.VGG16` and torchvision's: 3x3 'SAME' convolutions with biases,
2x2 max pools, then two 4096-wide dense layers with dropout: 138,357,544 parameters for VGG-16 at
224x224x3 and 1000 classes. The pools pad an odd map by one (never chosen: padding is -inf), so
a 28x28 or 32x32 image goes through all five (28 -> 14 -> 7 -> 4 -> 2 -> 1) and is identical to
the 'VALID' pools wherever the size is even. For small inputs, `dense=(512,)` and a `width`
below 64 give the usual CIFAR-sized VGG.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.layers import importers
from zoo.layers.blocks import ConvNorm
from zoo.layers.conv import global_avg_pool, max_pool
from zoo.models.inputs import batch_shape, check_input, dtypes, flatten

# depth: convolutions per stage, each stage ending in a max pool; stage i has width * 2**i
# channels, capped at 8x the width (512 for width 64).
SIZES: dict[int, tuple[int, ...]] = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}


class VGG(nn.Module):
    """A VGG classifier for `(*batch, H, W, C)` images.

    Attributes:
      depth: a key of `SIZES`.
      num_classes: number of logits.
      input_shape: one image, `(H, W, C)`.
      batch_norm: batch norm after every convolution (torchvision's `vgg16_bn`).
      width: channels of the first stage (64 in the paper).
      dense: widths of the hidden dense layers.
      dropout: drop rate after each hidden dense layer, in training only.
      include_top: logits; False returns the globally averaged last feature map `(*batch, C)`.
      batch_norm_axis: a `pmap` or `shard_map` axis to take batch statistics over.
    """

    depth: int = 16
    num_classes: int = 1000
    input_shape: Sequence[int] = (224, 224, 3)
    batch_norm: bool = False
    width: int = 64
    dense: Sequence[int] = (4096, 4096)
    dropout: float = 0.5
    include_top: bool = True
    batch_norm_axis: str | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        if self.depth not in SIZES:
            raise ValueError(f"vgg depth must be one of {sorted(SIZES)}, got {self.depth}")
        if len(self.input_shape) != 3:
            raise ValueError(
                f"vgg input_shape must be (height, width, channels), got {self.input_shape}"
            )
        if self.width < 1:
            raise ValueError(f"vgg width must be positive, got {self.width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"vgg dropout must be in [0, 1), got {self.dropout}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        h = check_input(x, self.input_shape, f"vgg{self.depth}")  # (B, H, W, C)
        for stage, convs in enumerate(SIZES[self.depth]):
            features = self.width * 2 ** min(stage, 3)
            for index in range(convs):
                h = ConvNorm(
                    features,
                    (3, 3),
                    batch_norm=self.batch_norm,
                    batch_norm_axis=self.batch_norm_axis,
                    name=f"stage{stage}_conv{index}",
                    **dtypes(self),
                )(h, train=train)
            h = max_pool(h, 2, 2, "SAME")  # (B, ceil(H / 2), ceil(W / 2), features)
        if not self.include_top:
            features = global_avg_pool(h)
            return features.reshape(*batch_shape(x, self.input_shape), features.shape[-1])
        h = flatten(h)  # (B, H/32 * W/32 * C), Keras' (channels-last) order
        for index, width in enumerate(self.dense):
            h = nn.relu(nn.Dense(width, name=f"dense{index}", **dtypes(self))(h))
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        logits = nn.Dense(self.num_classes, name="head", **dtypes(self))(h)
        return logits.reshape(*batch_shape(x, self.input_shape), logits.shape[-1])


def from_keras(model: VGG, weights: dict[str, list]) -> dict:
    """Variables of `model` (no batch norm) from a Keras `applications.VGG16`/`VGG19` of the same
    depth, given as `zoo.layers.importers.keras_weights(keras_model)`."""
    if model.batch_norm:
        raise ValueError("Keras' VGG has no batch norm: import it into VGG(batch_norm=False)")
    variables = importers.Variables()
    for stage, convs in enumerate(SIZES[model.depth]):
        for index in range(convs):
            importers.put_keras_conv_norm(
                variables, f"stage{stage}_conv{index}", weights[f"block{stage + 1}_conv{index + 1}"]
            )
    if model.include_top:
        dense = [f"fc{i + 1}" for i in range(len(model.dense))] + ["predictions"]
        paths = [f"dense{i}" for i in range(len(model.dense))] + ["head"]
        for keras, path in zip(dense, paths, strict=True):
            kernel, bias = weights[keras]
            variables.put("params", path, {"kernel": kernel, "bias": bias})
    return dict(variables)


def from_torch(model: VGG, state_dict: dict) -> dict:
    """Variables of `model` from the `state_dict` of a torchvision-layout VGG of the same depth
    (`features.{i}` convolutions and batch norms, `classifier.{0,3,6}` dense layers). The first
    dense layer's rows are reordered from PyTorch's channels-first flattening. With batch norm,
    torchvision's convolution biases fold into the running means."""
    convs = sorted(
        {int(key.split(".")[1]) for key in state_dict if key.startswith("features.")}
    )  # conv (and batch norm) indices in order
    layers = [i for i in convs if state_dict[f"features.{i}.weight"].ndim == 4]
    variables = importers.Variables()
    height, width = (-(-size // 32) for size in model.input_shape[:2])
    n = 0
    for stage, count in enumerate(SIZES[model.depth]):
        for index in range(count):
            conv, path = f"features.{layers[n]}", f"stage{stage}_conv{index}"
            norm = f"features.{layers[n] + 1}" if model.batch_norm else None
            importers.put_torch_conv_norm(variables, path, state_dict, conv, norm)
            if model.batch_norm:  # bn(conv + b) = bn'(conv) with the running mean less b
                bias = variables["params"][path]["conv"].pop("bias")
                variables["batch_stats"][path]["bn"]["mean"] = (
                    variables["batch_stats"][path]["bn"]["mean"] - bias
                )
            n += 1
    if model.include_top:
        channels = model.width * 8
        linear = [k for k in state_dict if k.startswith("classifier.") and k.endswith("weight")]
        paths = [f"dense{i}" for i in range(len(model.dense))] + ["head"]
        for i, (key, path) in enumerate(zip(linear, paths, strict=True)):
            flattened = (channels, height, width) if i == 0 else None
            variables.put(
                "params",
                path,
                importers.dense_from_torch(
                    state_dict[key],
                    state_dict[key[: -len("weight")] + "bias"],
                    flattened_from=flattened,
                ),
            )
    return dict(variables)
