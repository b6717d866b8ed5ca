"""Reference models that several parity tests build: PyTorch definitions in torchvision's layout
(their state-dict names), the seed CNN as a PyTorch user writes it, and the helpers that compare
logits with them. This module imports torch: import it where a test already requires torch."""

import jax
import numpy as np
import torch
from torch import nn as tnn


def torch_seed_cnn(torch):
    """The seed CNN in PyTorch, as a user would write it."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(64, 64, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(576, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10),
    )  # fmt: skip


class TorchBasic(tnn.Module):
    expansion = 1

    def __init__(self, inputs, width, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(inputs, width, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(width)
        self.conv2 = tnn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(width)
        self.downsample = None
        if stride != 1 or inputs != width:
            self.downsample = tnn.Sequential(
                tnn.Conv2d(inputs, width, 1, stride, bias=False), tnn.BatchNorm2d(width)
            )

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, inputs, width, stride):
        super().__init__()
        out = 4 * width
        self.conv1 = tnn.Conv2d(inputs, width, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(width)
        self.conv2 = tnn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(width)
        self.conv3 = tnn.Conv2d(width, out, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inputs != out:
            self.downsample = tnn.Sequential(
                tnn.Conv2d(inputs, out, 1, stride, bias=False), tnn.BatchNorm2d(out)
            )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(tnn.Module):
    def __init__(self, block, layers, num_classes, channels=3, width=64, stem="imagenet"):
        super().__init__()
        if stem == "imagenet":
            self.conv1 = tnn.Conv2d(channels, width, 7, 2, 3, bias=False)
            self.pool = tnn.MaxPool2d(3, 2, 1)
        else:  # CIFAR: one 3x3 convolution, no pooling
            self.conv1 = tnn.Conv2d(channels, width, 3, 1, 1, bias=False)
            self.pool = tnn.Identity()
        self.bn1 = tnn.BatchNorm2d(width)
        inputs, stages = width, []
        for i, blocks in enumerate(layers):
            stage = []
            for j in range(blocks):
                stage.append(block(inputs, width * 2**i, 2 if i > 0 and j == 0 else 1))
                inputs = width * 2**i * block.expansion
            stages.append(tnn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = tnn.Linear(inputs, num_classes)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def torch_vgg(config, batch_norm, num_classes, channels=3, dense=4096, spatial=7):
    """torchvision's VGG; its adaptive pool to `spatial` x `spatial` is the identity on inputs of
    32 * spatial pixels."""
    layers, inputs = [], channels
    for item in config:
        if item == "M":
            layers.append(tnn.MaxPool2d(2))
            continue
        layers.append(tnn.Conv2d(inputs, item, 3, padding=1))  # torchvision keeps the bias
        layers += [tnn.BatchNorm2d(item)] if batch_norm else []
        layers.append(tnn.ReLU())
        inputs = item

    class TorchVGG(tnn.Module):
        def __init__(self):
            super().__init__()
            self.features = tnn.Sequential(*layers)
            self.classifier = tnn.Sequential(
                tnn.Linear(inputs * spatial * spatial, dense),
                tnn.ReLU(),
                tnn.Dropout(),
                tnn.Linear(dense, dense),
                tnn.ReLU(),
                tnn.Dropout(),
                tnn.Linear(dense, num_classes),
            )

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    return TorchVGG()


VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def randomize_batch_norm(module, seed=0):
    """Running statistics and affine terms away from their initial 0/1, so eval mode tests them."""
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, tnn.BatchNorm2d):
            n = layer.num_features
            layer.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            layer.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            layer.weight.data.copy_(0.5 + torch.rand(n, generator=generator))
            layer.bias.data.copy_(0.1 * torch.randn(n, generator=generator))
    return module.eval()


def torch_logits(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


def assert_logits_close(ours, reference):
    scale = float(np.max(np.abs(reference)))
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * scale)


def keras_logits(keras_model, x) -> np.ndarray:
    """A Keras model's inference outputs, its graph compiled as one program: called eagerly,
    Keras compiles every layer apart (MobileNetV2 at 224x224: 4.7 s, jitted 0.9 s)."""

    @jax.jit
    def infer(trainable, non_trainable, x):
        return keras_model.stateless_call(trainable, non_trainable, x, training=False)[0]

    values = [
        [v.value for v in vs]
        for vs in (keras_model.trainable_variables, keras_model.non_trainable_variables)
    ]
    with jax.numpy_rank_promotion("allow"):  # Keras' own layers broadcast biases
        return np.asarray(infer(*values, x))


def randomize_keras_batch_norm(keras_model):
    """The Keras counterpart of `randomize_batch_norm`."""
    for layer in keras_model.layers:
        if type(layer).__name__ == "BatchNormalization":
            rng = np.random.default_rng(len(layer.name))
            n = layer.get_weights()[0].shape
            layer.set_weights(
                [
                    0.5 + rng.random(n, np.float32),
                    0.1 * rng.normal(size=n).astype(np.float32),
                    0.1 * rng.normal(size=n).astype(np.float32),
                    0.5 + rng.random(n, np.float32),
                ]
            )
    return keras_model
