"""ResNet-18 (CIFAR stem) and MobileNetV2 as `compare.py`'s peers write them: Flax's own blocks,
PyTorch modules in torchvision's layout and Keras 3, each with a converter of its weights into
zoo's variables (`{"params": ..., "batch_stats": ...}`), so `compare.agreement` can check that
every implementation computes zoo's function.

What has to match zoo's layout, not each framework's habit:
- ResNet's 3x3 convolutions pad one pixel each side (torchvision's `padding=1`). On an even map a
  stride-2 one then differs from 'SAME', which pads (0, 1): Flax pads explicitly, Keras puts a
  `ZeroPadding2D(1)` before a 'valid' convolution. Batch norm epsilon 1e-5 (Keras' is 1e-3).
- MobileNetV2 is Keras' `applications.MobileNetV2`: 'SAME' padding, ReLU6, epsilon 1e-3 and no
  dropout. PyTorch has no 'SAME' for strided convolutions, so its stride-2 ones pad their input
  with `F.pad` first, the extra pixel of an even map after it.
Running averages move by 10% a step, as zoo's do (PyTorch's momentum 0.1, Flax's and Keras' 0.9),
except in Keras' MobileNetV2 application (0.999): the momentum changes no logit here (the check
uses the initial running statistics) and no step's cost.

PyTorch and Keras are imported only when their builders run, so a missing peer costs nothing.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo import models
from zoo.layers import importers
from zoo.models import mobilenet, resnet

Variables = dict[str, Any]  # {"params": ..., "batch_stats": ...}

RESNET18_STAGES = (2, 2, 2, 2)  # basic blocks per stage; stage i has 64 * 2**i channels
MOBILENET_BLOCKS = mobilenet.BLOCKS  # (expansion, channels, blocks, first stride), width 1.0


def _resnet18_blocks():
    """`(zoo path, stage, index, strides)` of every basic block, in order."""
    for stage, blocks in enumerate(RESNET18_STAGES):
        for index in range(blocks):
            strides = 2 if stage > 0 and index == 0 else 1
            yield f"stage{stage}_block{index}", stage, index, strides


def _mobilenet_blocks():
    """`(index, expansion, channels, strides)` of every inverted residual, in order."""
    index = 0
    for expansion, channels, blocks, first_stride in MOBILENET_BLOCKS:
        for repeat in range(blocks):
            yield index, expansion, channels, first_stride if repeat == 0 else 1
            index += 1


# --- Flax ---------------------------------------------------------------------------------------


class FlaxResNetBlock(nn.Module):
    """The basic block of Flax's `examples/imagenet/models.py`, with torchvision's padding."""

    filters: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, *, train: bool):
        conv = functools.partial(nn.Conv, use_bias=False)
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5
        )
        residual = x
        y = conv(self.filters, (3, 3), self.strides, padding=((1, 1), (1, 1)))(x)
        y = nn.relu(norm()(y))
        y = norm()(conv(self.filters, (3, 3), padding=((1, 1), (1, 1)))(y))
        if residual.shape != y.shape:
            residual = conv(self.filters, (1, 1), self.strides, padding="VALID", name="conv_proj")(
                residual
            )
            residual = norm(name="norm_proj")(residual)
        return nn.relu(residual + y)


class FlaxResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem (one 3x3 convolution, no pooling), Flax examples' style."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = nn.Conv(64, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="conv_init")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn_init")(
            x
        )
        x = nn.relu(x)
        for _, stage, _, strides in _resnet18_blocks():
            x = FlaxResNetBlock(64 * 2**stage, strides)(x, train=train)
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


class FlaxInvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion (unless 1), 3x3 depthwise (`feature_group_count`),
    1x1 linear projection; the identity added where the shape allows."""

    expansion: int
    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, *, train: bool):
        conv = functools.partial(nn.Conv, use_bias=False)
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-3
        )
        y = x
        if self.expansion != 1:
            y = nn.relu6(norm()(conv(x.shape[-1] * self.expansion, (1, 1))(y)))
        channels = y.shape[-1]
        depthwise = conv(
            channels, (3, 3), self.strides, padding="SAME", feature_group_count=channels
        )
        y = nn.relu6(norm()(depthwise(y)))
        y = norm()(conv(self.features, (1, 1))(y))
        return x + y if self.strides == 1 and x.shape[-1] == self.features else y


class FlaxMobileNetV2(nn.Module):
    """Keras' MobileNetV2 at width 1.0 from Flax's layers: 'SAME' padding, ReLU6, no dropout."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-3
        )
        x = nn.relu6(norm()(nn.Conv(32, (3, 3), 2, padding="SAME", use_bias=False)(x)))
        for _, expansion, channels, strides in _mobilenet_blocks():
            x = FlaxInvertedResidual(expansion, channels, strides)(x, train=train)
        x = nn.relu6(norm()(nn.Conv(1280, (1, 1), use_bias=False)(x)))
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


def _put_flax(out, path: str, variables: Variables, scope: str | None, conv: str, norm: str):
    """Flax's `conv` and `norm` modules (in submodule `scope`) as zoo's `ConvNorm` at `path`."""
    params, stats = variables["params"], variables["batch_stats"]
    if scope is not None:
        params, stats = params[scope], stats[scope]
    out.put("params", f"{path}/conv", params[conv])
    out.put("params", f"{path}/bn", params[norm])
    out.put("batch_stats", f"{path}/bn", stats[norm])


def flax_resnet18_to_zoo(variables: Variables) -> Variables:
    out = importers.Variables()
    _put_flax(out, "stem", variables, None, "conv_init", "bn_init")
    for k, (path, *_) in enumerate(_resnet18_blocks()):
        block = f"FlaxResNetBlock_{k}"
        for n in (0, 1):
            _put_flax(out, f"{path}/conv{n + 1}", variables, block, f"Conv_{n}", f"BatchNorm_{n}")
        if "conv_proj" in variables["params"][block]:
            _put_flax(out, f"{path}/shortcut", variables, block, "conv_proj", "norm_proj")
    out.put("params", "head", variables["params"]["Dense_0"])
    return dict(out)


def flax_mobilenet_v2_to_zoo(variables: Variables) -> Variables:
    out = importers.Variables()
    _put_flax(out, "stem", variables, None, "Conv_0", "BatchNorm_0")
    for index, expansion, *_ in _mobilenet_blocks():
        block = f"FlaxInvertedResidual_{index}"
        parts = ["expand"] if expansion != 1 else []
        for n, part in enumerate([*parts, "depthwise", "project"]):
            _put_flax(out, f"block{index}_{part}", variables, block, f"Conv_{n}", f"BatchNorm_{n}")
    _put_flax(out, "top", variables, None, "Conv_1", "BatchNorm_1")
    out.put("params", "head", variables["params"]["Dense_0"])
    return dict(out)


# --- PyTorch ------------------------------------------------------------------------------------


def torch_resnet18(num_classes: int = 10):
    """torchvision's `resnet18` with the CIFAR stem (`conv1` 3x3 stride 1, no max pool)."""
    from torch import nn as tnn

    class BasicBlock(tnn.Module):
        def __init__(self, inputs, width, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(inputs, width, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(width)
            self.conv2 = tnn.Conv2d(width, width, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(width)
            self.relu = tnn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or inputs != width:
                self.downsample = tnn.Sequential(
                    tnn.Conv2d(inputs, width, 1, stride, bias=False), tnn.BatchNorm2d(width)
                )

        def forward(self, x):
            y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet18(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(64)
            self.relu = tnn.ReLU(inplace=True)
            inputs, stages = 64, [[] for _ in RESNET18_STAGES]
            for _, stage, _, strides in _resnet18_blocks():
                stages[stage].append(BasicBlock(inputs, 64 * 2**stage, strides))
                inputs = 64 * 2**stage
            self.layer1, self.layer2, self.layer3, self.layer4 = (
                tnn.Sequential(*blocks) for blocks in stages
            )
            self.fc = tnn.Linear(inputs, num_classes)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(x.mean(dim=(2, 3)))

    return ResNet18()


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """'SAME' padding of one axis (`lax`'s and Keras'): the odd pixel goes after the map."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def torch_mobilenet_v2(num_classes: int = 10):
    """torchvision's `mobilenet_v2` layout (`features.{i}`, `conv.{j}`, `classifier.1`) with zoo's
    (Keras') math: 'SAME' padding, batch norm epsilon 1e-3, no dropout."""
    import torch
    from torch import nn as tnn

    class SameConv2d(tnn.Conv2d):
        """`nn.Conv2d` padded as 'SAME': symmetric at stride 1, by `F.pad` before a strided one."""

        def __init__(self, inputs, out, kernel, stride=1, groups=1):
            padding = kernel // 2 if stride == 1 else 0
            super().__init__(inputs, out, kernel, stride, padding, groups=groups, bias=False)

        def forward(self, x):
            if self.stride[0] > 1:
                (top, bottom), (left, right) = (
                    same_padding(size, k, s)
                    for size, k, s in zip(x.shape[2:], self.kernel_size, self.stride, strict=True)
                )
                x = torch.nn.functional.pad(x, (left, right, top, bottom))
            return super().forward(x)

    def conv_norm_relu6(inputs, out, kernel, stride=1, groups=1):
        return tnn.Sequential(
            SameConv2d(inputs, out, kernel, stride, groups),
            tnn.BatchNorm2d(out, eps=1e-3),
            tnn.ReLU6(inplace=True),
        )

    class InvertedResidual(tnn.Module):
        def __init__(self, inputs, out, stride, expansion):
            super().__init__()
            hidden = inputs * expansion
            layers = [conv_norm_relu6(inputs, hidden, 1)] if expansion != 1 else []
            layers += [
                conv_norm_relu6(hidden, hidden, 3, stride, groups=hidden),
                tnn.Conv2d(hidden, out, 1, bias=False),
                tnn.BatchNorm2d(out, eps=1e-3),
            ]
            self.conv = tnn.Sequential(*layers)
            self.use_res_connect = stride == 1 and inputs == out

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(tnn.Module):
        def __init__(self):
            super().__init__()
            features, inputs = [conv_norm_relu6(3, 32, 3, 2)], 32
            for _, expansion, channels, strides in _mobilenet_blocks():
                features.append(InvertedResidual(inputs, channels, strides, expansion))
                inputs = channels
            features.append(conv_norm_relu6(inputs, 1280, 1))
            self.features = tnn.Sequential(*features)
            # Identity where torchvision has Dropout(0.2): Keras' and zoo's have none.
            self.classifier = tnn.Sequential(tnn.Identity(), tnn.Linear(1280, num_classes))

        def forward(self, x):
            return self.classifier(self.features(x).mean(dim=(2, 3)))

    return MobileNetV2()


def torch_mobilenet_v2_to_zoo(state_dict: Mapping[str, Any]) -> Variables:
    out = importers.Variables()
    importers.put_torch_conv_norm(out, "stem", state_dict, "features.0.0", "features.0.1")
    for index, expansion, *_ in _mobilenet_blocks():
        block = f"features.{index + 1}.conv"
        parts = (["expand"] if expansion != 1 else []) + ["depthwise"]
        for j, part in enumerate(parts):  # each a Sequential of conv, bn, relu6
            importers.put_torch_conv_norm(
                out, f"block{index}_{part}", state_dict, f"{block}.{j}.0", f"{block}.{j}.1"
            )
        project = len(parts)  # then the projection's conv and bn
        importers.put_torch_conv_norm(
            out, f"block{index}_project", state_dict, f"{block}.{project}", f"{block}.{project + 1}"
        )
    last = f"features.{sum(blocks for _, _, blocks, _ in MOBILENET_BLOCKS) + 1}"
    importers.put_torch_conv_norm(out, "top", state_dict, f"{last}.0", f"{last}.1")
    head = importers.dense_from_torch(
        state_dict["classifier.1.weight"], state_dict["classifier.1.bias"]
    )
    out.put("params", "head", head)
    return dict(out)


# --- Keras 3 ------------------------------------------------------------------------------------


def keras_resnet18(input_shape: Sequence[int], num_classes: int = 10):
    """ResNet-18 with the CIFAR stem from `keras.layers`; each layer is named after zoo's module
    path ('stage1_block0_conv1_conv' for 'stage1_block0/conv1/conv')."""
    import keras

    layers = keras.layers

    def conv_norm(x, filters, kernel, strides, name, relu=True):
        padding = "same" if kernel == 3 else "valid"
        if kernel == 3 and strides == 2:  # one pixel each side, not 'same''s (0, 1)
            x, padding = layers.ZeroPadding2D(1, name=f"{name}_pad")(x), "valid"
        x = layers.Conv2D(filters, kernel, strides, padding, use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x) if relu else x

    inputs = keras.Input(input_shape)
    x = conv_norm(inputs, 64, 3, 1, "stem")
    for path, stage, _, strides in _resnet18_blocks():
        width = 64 * 2**stage
        y = conv_norm(x, width, 3, strides, f"{path}_conv1")
        y = conv_norm(y, width, 3, 1, f"{path}_conv2", relu=False)
        if strides != 1 or x.shape[-1] != width:
            x = conv_norm(x, width, 1, strides, f"{path}_shortcut", relu=False)
        x = layers.ReLU(name=f"{path}_out")(layers.Add(name=f"{path}_add")([x, y]))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="head")(x), name="resnet18")


def keras_resnet18_to_zoo(weights: Mapping[str, list]) -> Variables:
    """From `importers.keras_weights(keras_resnet18(...))`."""
    out = importers.Variables()
    paths = ["stem"]
    for path, *_ in _resnet18_blocks():
        paths += [f"{path}/conv1", f"{path}/conv2", f"{path}/shortcut"]
    for path in paths:
        name = path.replace("/", "_")
        if f"{name}_conv" in weights:
            importers.put_keras_conv_norm(out, path, weights[f"{name}_conv"], weights[f"{name}_bn"])
    kernel, bias = weights["head"]
    out.put("params", "head", {"kernel": kernel, "bias": bias})
    return dict(out)


def keras_mobilenet_v2(input_shape: Sequence[int], num_classes: int = 10):
    import keras

    return keras.applications.MobileNetV2(
        weights=None,
        input_shape=tuple(input_shape),
        classes=num_classes,
        classifier_activation=None,
    )


def keras_mobilenet_v2_to_zoo(weights: Mapping[str, list]) -> Variables:
    """From `importers.keras_weights(keras_mobilenet_v2(...))`: zoo's own importer, which reads
    no input shape from the model it is given."""
    return mobilenet.from_keras(models.create("mobilenet_v2", num_classes=10), weights)


# --- logits with batch statistics -----------------------------------------------------------------


def torch_batch_statistics_logits(net, inputs) -> np.ndarray:
    """`net`'s logits in training mode (batch statistics); its running statistics, which that
    pass moves, are put back, and it is left in training mode."""
    import torch

    initial = {key: value.clone() for key, value in net.state_dict().items()}
    with torch.no_grad():
        logits = net.train()(inputs).numpy()
    net.load_state_dict(initial)
    return logits


def keras_logits(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A Keras model's logits with `training=False` (running statistics) and `training=True`
    (batch statistics), in one compilation; its variables untouched."""
    values = [
        [v.value for v in vs] for vs in (model.trainable_variables, model.non_trainable_variables)
    ]

    @jax.jit
    def logits(trainable, other, x):
        return [model.stateless_call(trainable, other, x, training=t)[0] for t in (False, True)]

    eval_mode, train_mode = logits(*values, x)
    return np.asarray(eval_mode), np.asarray(train_mode)


# --- the table compare.py reads -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family in every implementation, and the converters into zoo's variables."""

    zoo: Callable[[tuple[int, ...]], nn.Module]  # input shape -> zoo's model
    flax: Callable[[], nn.Module]
    flax_to_zoo: Callable[[Variables], Variables]
    torch: Callable[[], Any]  # an `nn.Module` taking NCHW batches
    torch_to_zoo: Callable[[Mapping[str, Any]], Variables]  # of its state dict
    keras: Callable[[tuple[int, ...]], Any]  # input shape -> `keras.Model`
    keras_to_zoo: Callable[[Mapping[str, list]], Variables]  # of `importers.keras_weights`


def _zoo_resnet18(shape):
    return models.create("resnet18", stem="cifar", input_shape=shape, num_classes=10)


def _zoo_mobilenet_v2(shape):
    return models.create("mobilenet_v2", input_shape=shape, num_classes=10)


FAMILIES = {
    "resnet18": Family(
        zoo=_zoo_resnet18,
        flax=FlaxResNet18,
        flax_to_zoo=flax_resnet18_to_zoo,
        torch=torch_resnet18,
        torch_to_zoo=functools.partial(resnet.from_torch, _zoo_resnet18((32, 32, 3))),
        keras=keras_resnet18,
        keras_to_zoo=keras_resnet18_to_zoo,
    ),
    "mobilenet_v2": Family(
        zoo=_zoo_mobilenet_v2,
        flax=FlaxMobileNetV2,
        flax_to_zoo=flax_mobilenet_v2_to_zoo,
        torch=torch_mobilenet_v2,
        torch_to_zoo=torch_mobilenet_v2_to_zoo,
        keras=keras_mobilenet_v2,
        keras_to_zoo=keras_mobilenet_v2_to_zoo,
    ),
}
