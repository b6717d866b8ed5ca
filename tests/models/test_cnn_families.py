"""The CNN families against their references: parameter counts and logits of Keras 3's
`applications` (weights imported) and of PyTorch definitions in torchvision's layout, written
here from the papers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from references import (
    VGG11,
    VGG16,
    TorchBasic,
    TorchBottleneck,
    TorchResNet,
    assert_logits_close,
    keras_logits,
    randomize_batch_norm,
    randomize_keras_batch_norm,
    torch_logits,
    torch_vgg,
)
from torch import nn as tnn

from zoo import models
from zoo.layers import importers
from zoo.models import mobilenet, resnet, vgg

keras = pytest.importorskip("keras")


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def shapes(name: str, **options):
    model = models.create(name, **options)
    x = jnp.zeros((1, *model.input_shape))
    return jax.eval_shape(model.init, jax.random.key(0), x)


# --- PyTorch definitions of the CIFAR paper's ResNet and LeNet-5 (torchvision's: references.py) ---


class TorchCifarBlock(tnn.Module):
    """The CIFAR paper's basic block with option A shortcuts."""

    def __init__(self, inputs, width, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(inputs, width, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(width)
        self.conv2 = tnn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(width)
        self.stride, self.extra = stride, width - inputs

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        shortcut = x[:, :, :: self.stride, :: self.stride]
        half = self.extra // 2
        shortcut = tnn.functional.pad(shortcut, (0, 0, 0, 0, half, self.extra - half))
        return torch.relu(y + shortcut)


class TorchResNet20(tnn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(16)
        inputs, stages = 16, []
        for i in range(3):
            stage = []
            for j in range(3):
                stage.append(TorchCifarBlock(inputs, 16 * 2**i, 2 if i > 0 and j == 0 else 1))
                inputs = 16 * 2**i
            stages.append(tnn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = tnn.Linear(64, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(self.layer3(self.layer2(self.layer1(x))).mean(dim=(2, 3)))


def torch_lenet5(num_classes=10):
    return tnn.Sequential(
        tnn.Conv2d(1, 6, 5), tnn.Tanh(), tnn.AvgPool2d(2),
        tnn.Conv2d(6, 16, 5), tnn.Tanh(), tnn.AvgPool2d(2),
        tnn.Conv2d(16, 120, 5), tnn.Tanh(), tnn.Flatten(),
        tnn.Linear(120, 84), tnn.Tanh(), tnn.Linear(84, num_classes),
    )  # fmt: skip


def torch_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- parameter counts at 224x224x3 and 1000 classes --------------------------------------------


@pytest.mark.parametrize(
    "name, torch_model",
    [
        ("resnet18", lambda: TorchResNet(TorchBasic, (2, 2, 2, 2), 1000)),
        ("resnet34", lambda: TorchResNet(TorchBasic, (3, 4, 6, 3), 1000)),
        ("resnet50", lambda: TorchResNet(TorchBottleneck, (3, 4, 6, 3), 1000)),
        ("vgg11", lambda: torch_vgg(VGG11, False, 1000)),
        ("vgg16", lambda: torch_vgg(VGG16, False, 1000)),
    ],
)
def test_parameter_counts_equal_the_pytorch_definitions(name, torch_model):
    with torch.device("meta"):  # shapes only: no 138M random values
        reference = torch_count(torch_model())
    assert count(shapes(name)["params"]) == reference


def test_small_families_count_as_the_papers_pytorch_definitions():
    assert count(shapes("resnet20")["params"]) == torch_count(TorchResNet20())  # 0.27M
    assert count(shapes("lenet5")["params"]) == torch_count(torch_lenet5()) == 61_706


def keras_logits_match(name, options, keras_model, importer, shape, batch=2):
    """Imports `keras_model`'s weights, with batch norm's statistics and affine terms moved away
    from their initial values, and compares logits in evaluation mode."""
    x = np.random.default_rng(0).normal(size=(batch, *shape)).astype(np.float32)
    classes = keras_model.output_shape[-1]
    model = models.create(name, input_shape=shape, num_classes=classes, **options)
    randomize_keras_batch_norm(keras_model)
    variables = importer(model, importers.keras_weights(keras_model))
    assert jax.tree.structure(variables) == jax.tree.structure(
        jax.eval_shape(model.init, jax.random.key(0), x)
    )
    reference = keras_logits(keras_model, x)
    assert_logits_close(np.asarray(jax.jit(model.apply)(variables, x)), reference)


@pytest.mark.parametrize(
    "name, options, application, importer",
    [
        ("resnet50", {"keras_layout": True}, "ResNet50", resnet.from_keras),
        ("vgg16", {}, "VGG16", vgg.from_keras),
        ("mobilenet_v2", {}, "MobileNetV2", mobilenet.from_keras),
    ],
)
def test_counts_and_logits_equal_keras_applications(name, options, application, importer):
    """At 224x224x3 and 1000 classes. Keras counts batch norm's running statistics among its
    weights, so the count is of every variable."""
    with jax.numpy_rank_promotion("allow"):
        keras_model = getattr(keras.applications, application)(
            weights=None, classifier_activation=None
        )
    assert count(shapes(name, **options)) == keras_model.count_params()
    keras_logits_match(name, options, keras_model, importer, (224, 224, 3), batch=1)


@pytest.mark.parametrize("shape", [(35, 33, 3), (32, 32, 1)])  # odd sizes: Keras' correct_pad
def test_mobilenet_v2_logits_equal_keras_at_small_sizes_and_widths(shape):
    with jax.numpy_rank_promotion("allow"):
        keras_model = keras.applications.MobileNetV2(
            weights=None, input_shape=shape, classes=7, classifier_activation=None, alpha=0.35
        )
    keras_logits_match("mobilenet_v2", {"alpha": 0.35}, keras_model, mobilenet.from_keras, shape)


@pytest.mark.parametrize(
    "name, torch_model, shape, stem",
    [
        (
            "resnet18",
            lambda: TorchResNet(TorchBasic, (2, 2, 2, 2), 7, 3, 16),
            (40, 36, 3),
            "imagenet",
        ),
        (
            "resnet18",
            lambda: TorchResNet(TorchBasic, (2, 2, 2, 2), 7, 3, 8, stem="cifar"),
            (12, 10, 3),
            "cifar",
        ),
        (
            "resnet50",
            lambda: TorchResNet(TorchBottleneck, (3, 4, 6, 3), 7, 1, 8),
            (33, 32, 1),
            "imagenet",
        ),
    ],
)
def test_resnet_logits_equal_pytorch_with_imported_weights(name, torch_model, shape, stem):
    torch.manual_seed(0)
    reference = randomize_batch_norm(torch_model())
    width = reference.conv1.out_channels
    model = models.create(name, input_shape=shape, num_classes=7, width=width, stem=stem)
    variables = resnet.from_torch(model, reference.state_dict())
    x = np.random.default_rng(1).normal(size=(2, *shape)).astype(np.float32)
    assert_logits_close(np.asarray(jax.jit(model.apply)(variables, x)), torch_logits(reference, x))


def test_resnet_importers_name_the_layouts_they_read():
    state = TorchResNet(TorchBasic, (2, 2, 2, 2), 7, 3, 8, stem="cifar").state_dict()
    with pytest.raises(ValueError, match="'imagenet' or 'cifar' stem and projection shortcuts"):
        resnet.from_torch(models.create("resnet20"), state)  # option A shortcuts
    with pytest.raises(ValueError, match="from_keras reads ResNets with the 'imagenet' stem"):
        resnet.from_keras(models.create("resnet18", stem="cifar"), {})


def test_vgg_bn_logits_equal_pytorch_with_its_conv_biases_folded():
    torch.manual_seed(0)
    config = [c if c == "M" else c // 8 for c in VGG11]  # width 8
    reference = randomize_batch_norm(torch_vgg(config, True, 7, channels=2, dense=32, spatial=2))
    for layer in reference.features:
        if isinstance(layer, tnn.Conv2d):  # biases that batch norm's mean has to absorb
            layer.bias.data.normal_()
    model = models.create(
        "vgg11_bn", input_shape=(64, 64, 2), num_classes=7, width=8, dense=(32, 32)
    )
    variables = vgg.from_torch(model, reference.state_dict())
    x = np.random.default_rng(1).normal(size=(2, 64, 64, 2)).astype(np.float32)
    assert_logits_close(np.asarray(jax.jit(model.apply)(variables, x)), torch_logits(reference, x))


def test_lenet5_and_resnet20_compute_what_their_pytorch_definitions_compute():
    torch.manual_seed(0)
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 1)).astype(np.float32)
    lenet = torch_lenet5(4).eval()
    conv = [layer for layer in lenet if isinstance(layer, tnn.Conv2d)]
    dense = [layer for layer in lenet if isinstance(layer, tnn.Linear)]
    params = {
        name: importers.conv_from_torch(layer.weight, layer.bias)
        for name, layer in zip(("c1", "c3", "c5"), conv, strict=True)
    } | {
        name: importers.dense_from_torch(layer.weight, layer.bias)
        for name, layer in zip(("f6", "head"), dense, strict=True)
    }
    ours = models.create("lenet5", num_classes=4).apply({"params": params}, x)
    assert_logits_close(np.asarray(ours), torch_logits(lenet, x))

    cifar = randomize_batch_norm(TorchResNet20(5))
    state = cifar.state_dict()
    variables = importers.Variables()
    importers.put_torch_conv_norm(variables, "stem", state, "conv1", "bn1")
    for stage in range(3):
        for index in range(3):
            for k in (1, 2):
                importers.put_torch_conv_norm(
                    variables,
                    f"stage{stage}_block{index}/conv{k}",
                    state,
                    f"layer{stage + 1}.{index}.conv{k}",
                    f"layer{stage + 1}.{index}.bn{k}",
                )
    variables.put(
        "params", "head", importers.dense_from_torch(state["fc.weight"], state["fc.bias"])
    )
    x = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(np.float32)
    ours = models.create("resnet20", num_classes=5).apply(dict(variables), x)
    assert_logits_close(np.asarray(ours), torch_logits(cifar, x))


# --- features, options, registry ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name, options, width",
    [
        ("resnet18", {"width": 4}, 32),
        ("resnet50", {"width": 2}, 64),
        ("resnet20", {}, 64),
        ("vgg11", {"width": 2, "dense": ()}, 16),  # a 1x1 last map: flattened is pooled
        ("mobilenet_v2", {"alpha": 0.35}, 1280),
        ("lenet5", {}, 84),
    ],
)
def test_include_top_false_returns_the_pooled_features_under_the_head(name, options, width):
    shape = (32, 32, 3) if name != "lenet5" else (32, 32, 1)
    x = jax.random.normal(jax.random.key(0), (3, *shape))
    full = models.create(name, input_shape=shape, num_classes=5, **options)
    trunk = models.create(name, input_shape=shape, include_top=False, **options)
    variables = jax.jit(full.init)(jax.random.key(1), x)
    features = jax.jit(trunk.apply)(
        {**variables, "params": {k: v for k, v in variables["params"].items() if k != "head"}}, x
    )
    assert features.shape == (3, width)
    head = variables["params"]["head"]
    logits = features @ head["kernel"] + head["bias"][None]
    np.testing.assert_allclose(logits, jax.jit(full.apply)(variables, x), rtol=1e-5, atol=1e-5)


def test_bad_family_options_name_the_option():
    with pytest.raises(ValueError, match=r"resnet depth must be one of \[18, 20"):
        models.ResNet(depth=19)
    with pytest.raises(ValueError, match="stem must be one of"):
        models.create("resnet18", stem="tiny")
    with pytest.raises(ValueError, match="alpha must be positive"):
        models.create("mobilenet_v2", alpha=0)
    with pytest.raises(ValueError, match=r"\(height, width, channels\)"):
        models.create("vgg16", input_shape=(32, 32))
    with pytest.raises(ValueError, match="Keras' applications.ResNet50"):
        resnet.from_keras(models.create("resnet18"), {})


def test_names_filter_and_every_model_is_creatable_with_no_options():
    assert models.names("resnet*") == ["resnet18", "resnet20", "resnet34", "resnet50"]
    assert models.names("vgg*_bn") == ["vgg11_bn", "vgg16_bn"]
    for name in models.names():
        model = models.create(name)
        x = models.example_input(name, batch_size=2)
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
        outputs = jax.eval_shape(model.apply, variables, x)
        assert {leaf.shape[0] for leaf in jax.tree.leaves(outputs)} == {2}


def test_options_report_defaults_and_types():
    options = models.options("resnet20")
    assert options["width"] == models.Option(16, int)  # the CIFAR paper's, not ResNet's 64
    assert options["stem"].default == "cifar" and "depth" not in options  # the row fixes depth
    assert models.options("resnet18")["width"].default == 64
    assert models.options("lstm")["input_shape"].default == (28, 28)
