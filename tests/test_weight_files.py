"""`zoo.load_weights`: a PyTorch state dict saved as safetensors, or a Keras weights file, gives
exactly what the in-memory importers give and the logits of the model that wrote it; pickles,
missing files and files of another architecture are refused in one line."""

import shutil

import chex
import jax
import numpy as np
import pytest
import torch
from references import (
    TorchBasic,
    TorchResNet,
    assert_logits_close,
    keras_logits,
    randomize_batch_norm,
    randomize_keras_batch_norm,
    torch_logits,
    torch_seed_cnn,
    torch_vgg,
)
from safetensors.torch import save_file
from torch import nn as tnn

import zoo
from zoo import models
from zoo.layers import importers
from zoo.layers.convlstm import from_keras_convlstm
from zoo.models import mobilenet, resnet, vgg
from zoo.weights import WeightsError

T, F = 6, 3  # steps and features of the recurrent models' sequences


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


def batch(shape, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(2, *shape)).astype(np.float32)


def assert_same_variables(loaded, imported):
    """Exactly the in-memory importer's values, as the arrays `model.init` gives."""
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(loaded))
    chex.assert_trees_all_equal(
        jax.tree.map(np.asarray, loaded),
        jax.tree.map(lambda a: np.asarray(a, np.float32), imported),
    )


# --- PyTorch state dicts -----------------------------------------------------------------------


class TorchRNNClassifier(tnn.Module):
    """Recurrent module(s), then a Linear on the last hidden state (both directions' final ones,
    as zoo and Keras take them)."""

    def __init__(self, rnns, classes):
        super().__init__()
        self.rnns = tnn.ModuleList(rnns)
        last = rnns[-1]
        self.head = tnn.Linear(last.hidden_size * (2 if last.bidirectional else 1), classes)

    def forward(self, x):  # (B, T, F), batch first
        for rnn in self.rnns:
            x, state = rnn(x)
        h_n = state[0] if isinstance(state, tuple) else state  # (layers * directions, B, H)
        last = self.rnns[-1]
        final = torch.cat([h_n[-2], h_n[-1]], -1) if last.bidirectional else h_n[-1]
        return self.head(final)


def torch_rnn_case(name):
    """(torch classifier, zoo model, what the in-memory importers give)."""
    if name == "bilstm":  # one nn.LSTM, two layers, both directions
        rnns = [tnn.LSTM(F, 5, num_layers=2, bidirectional=True, batch_first=True)]
        model = models.create(name, input_shape=(T, F), hidden_sizes=(5, 5), num_classes=4)
    else:  # two nn.GRU modules, stacked by hand
        rnns = [tnn.GRU(F, 5, batch_first=True), tnn.GRU(5, 4, batch_first=True)]
        model = models.create(name, input_shape=(T, F), hidden_sizes=(5, 4), num_classes=4)
    net = TorchRNNClassifier(rnns, 4).eval()
    if len(rnns) == 1:
        stacked = importers.from_torch(rnns[0].state_dict(), model.cell)
    else:  # one layer each
        stacked = {
            f"layer_{k}": importers.from_torch(rnn.state_dict(), model.cell)["layer_0"]
            for k, rnn in enumerate(rnns)
        }
    head = importers.dense_from_torch(net.head.weight, net.head.bias)
    return net, model, {"params": {"StackedRNN_0": stacked, "Dense_0": head}}


def torch_case(name):
    """(torch model, zoo model, its input shape, what the in-memory importer gives)."""
    torch.manual_seed(0)
    if name == "cnn":
        net = torch_seed_cnn(torch).eval()
        imported = {"params": importers.cnn_from_torch(net.state_dict())}
        return net, models.create("cnn"), (28, 28, 1), imported
    if name == "resnet18":
        net = randomize_batch_norm(TorchResNet(TorchBasic, (2, 2, 2, 2), 10, 3, 8))
        model = models.create(name, input_shape=(32, 32, 3), num_classes=10, width=8)
        return net, model, (32, 32, 3), resnet.from_torch(model, net.state_dict())
    if name == "vgg11_bn":
        config = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
        config = [c if c == "M" else c // 8 for c in config]  # width 8
        net = randomize_batch_norm(torch_vgg(config, True, 10, dense=32, spatial=1))
        model = models.create(
            name, input_shape=(32, 32, 3), num_classes=10, width=8, dense=(32, 32)
        )
        return net, model, (32, 32, 3), vgg.from_torch(model, net.state_dict())
    net, model, imported = torch_rnn_case(name)
    return net, model, (T, F), imported


@pytest.mark.parametrize("name", ["cnn", "resnet18", "vgg11_bn", "bilstm", "gru"])
def test_pytorch_state_dicts_load_as_the_importers_give_them(name, tmp_path):
    net, model, shape, imported = torch_case(name)
    save_file(net.state_dict(), tmp_path / "model.safetensors")
    variables = zoo.load_weights(tmp_path / "model.safetensors", model)
    assert_same_variables(variables, imported)
    x = batch(shape)
    if len(shape) == 3:
        reference = torch_logits(net, x)
    else:
        with torch.no_grad():
            reference = net(torch.from_numpy(x)).numpy()
    assert_logits_close(np.asarray(jax.jit(model.apply)(variables, x)), reference)


# --- Keras weight files ------------------------------------------------------------------------


def keras_seed_cnn(keras):
    """The Keras MNIST CNN, which `zoo.models.create("cnn")` is."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 3, activation="relu", bias_initializer="random_normal"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.Flatten(),
            layers.Dense(64, activation="relu", bias_initializer="random_normal"),
            layers.Dense(10),
        ]
    )


def keras_vgg(keras, shape, width, dense, classes, convs=(1, 1, 2, 2, 2)):
    """A VGG with `applications.VGG16`'s layer names (VGG-11 by default), at any width."""
    x = inputs = keras.Input(shape)
    for stage, count in enumerate(convs):
        for index in range(count):
            x = keras.layers.Conv2D(
                width * 2 ** min(stage, 3),
                3,
                padding="same",
                activation="relu",
                name=f"block{stage + 1}_conv{index + 1}",
            )(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{stage + 1}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for i, units in enumerate(dense):
        x = keras.layers.Dense(units, activation="relu", name=f"fc{i + 1}")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="predictions")(x))


def keras_resnet50(keras, shape, width, classes):
    """`applications.ResNet50`, layer for layer and name for name, at any width."""
    layers = keras.layers

    def conv_bn(x, filters, kernel, strides, name, relu=True, padding="valid"):
        x = layers.Conv2D(filters, kernel, strides, padding=padding, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_bn")(x)
        return layers.Activation("relu", name=f"{name}_relu")(x) if relu else x

    inputs = keras.Input(shape)
    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = conv_bn(x, width, 7, 2, "conv1")
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, 2, name="pool1_pool")(x)
    for stage, blocks in enumerate((3, 4, 6, 3)):
        filters = width * 2**stage
        for index in range(blocks):
            name, strides = f"conv{stage + 2}_block{index + 1}", 2 if stage and not index else 1
            shortcut = x
            if index == 0:
                shortcut = conv_bn(x, 4 * filters, 1, strides, f"{name}_0", relu=False)
            y = conv_bn(x, filters, 1, strides, f"{name}_1")
            y = conv_bn(y, filters, 3, 1, f"{name}_2", padding="same")
            y = conv_bn(y, 4 * filters, 1, 1, f"{name}_3", relu=False)
            x = layers.Activation("relu", name=f"{name}_out")(layers.Add()([shortcut, y]))
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, layers.Dense(classes, name="predictions")(x))


def kernel_bias(layer) -> dict:
    return dict(zip(("kernel", "bias"), layer.get_weights(), strict=True))


def keras_case(name, keras):
    """(Keras model, zoo model, input shape, what the in-memory importers give)."""
    keras.utils.set_random_seed(0)
    with jax.numpy_rank_promotion("allow"):
        if name == "cnn":
            km = keras_seed_cnn(keras)
            convs, dense = km.layers[0:5:2], km.layers[6:]  # Keras' layout is zoo's
            params = {f"Conv_{i}": kernel_bias(layer) for i, layer in enumerate(convs)}
            params |= {f"Dense_{i}": kernel_bias(layer) for i, layer in enumerate(dense)}
            return km, models.create("cnn"), (28, 28, 1), {"params": params}
        if name in ("lstm", "bigru"):
            cell, bidirectional = ("gru", True) if name == "bigru" else ("lstm", False)
            recurrent = keras.layers.GRU if cell == "gru" else keras.layers.LSTM
            rnns = [
                recurrent(5, return_sequences=True, bias_initializer="random_normal"),
                recurrent(4, bias_initializer="random_normal"),
            ]
            if bidirectional:
                rnns = [keras.layers.Bidirectional(rnn) for rnn in rnns]
            km = keras.Sequential([keras.Input((T, F)), *rnns, keras.layers.Dense(4)])
            model = models.create(name, input_shape=(T, F), hidden_sizes=(5, 4), num_classes=4)
            weights = [rnn.get_weights() for rnn in rnns]
            stacked = importers.from_keras(weights, cell, bidirectional=bidirectional)
            head = kernel_bias(km.layers[-1])
            return km, model, (T, F), {"params": {"StackedRNN_0": stacked, "Dense_0": head}}
        if name == "convlstm":
            shape = (4, 8, 8, 2)
            convlstm = [
                keras.layers.ConvLSTM2D(
                    3, 3, padding="same", return_sequences=True, bias_initializer="random_normal"
                ),
                keras.layers.ConvLSTM2D(2, 3, padding="same"),
            ]
            pool, head = keras.layers.GlobalMaxPooling2D(), keras.layers.Dense(5)
            km = keras.Sequential([keras.Input(shape), *convlstm, pool, head])
            model = models.create(name, input_shape=shape, filters=(3, 2), num_classes=5)
            params = {
                f"convlstm_{i}": from_keras_convlstm(c.get_weights())
                for i, c in enumerate(convlstm)
            }
            return km, model, shape, {"params": params | {"Dense_0": kernel_bias(km.layers[-1])}}
        shape = (32, 32, 3)
        if name == "vgg11":
            km = keras_vgg(keras, shape, 4, (16, 16), 10)
            model = models.create(name, input_shape=shape, num_classes=10, width=4, dense=(16, 16))
            importer = vgg.from_keras
        elif name == "resnet50":
            km = randomize_keras_batch_norm(keras_resnet50(keras, shape, 4, 10))
            model = models.create(
                name, input_shape=shape, num_classes=10, width=4, keras_layout=True
            )
            importer = resnet.from_keras
        else:  # Keras' own applications.MobileNetV2, narrow
            km = keras.applications.MobileNetV2(
                weights=None, input_shape=shape, classes=7, alpha=0.35, classifier_activation=None
            )
            randomize_keras_batch_norm(km)
            model = models.create(name, input_shape=shape, num_classes=7, alpha=0.35)
            importer = mobilenet.from_keras
    return km, model, shape, importer(model, importers.keras_weights(km))


KERAS_MODELS = ["cnn", "lstm", "bigru", "convlstm", "vgg11", "resnet50", "mobilenet_v2"]


@pytest.mark.parametrize("name", KERAS_MODELS)
def test_keras_weight_files_load_as_the_importers_give_them(name, keras, tmp_path):
    km, model, shape, imported = keras_case(name, keras)
    km.save_weights(tmp_path / "model.weights.h5")
    variables = zoo.load_weights(tmp_path / "model.weights.h5", model)
    assert_same_variables(variables, imported)
    x = batch(shape)
    assert_logits_close(np.asarray(jax.jit(model.apply)(variables, x)), keras_logits(km, x))


def test_keras_archives_and_keras_2_h5_files_hold_the_same_weights(keras, tmp_path):
    km, model, _, imported = keras_case("bigru", keras)
    km.save(tmp_path / "model.keras")  # Keras 3's archive: model.weights.h5 inside
    km.save(tmp_path / "model.h5")  # the legacy format: layer_names, weight_names
    for filename in ("model.keras", "model.h5"):
        assert_same_variables(zoo.load_weights(tmp_path / filename, model), imported)


# --- what is refused ---------------------------------------------------------------------------


@pytest.mark.parametrize("filename", ["model.pt", "model.pth", "pytorch_model.bin"])
def test_pickles_are_refused_with_how_to_save_a_state_dict(filename, tmp_path):
    (tmp_path / filename).write_bytes(b"\x80\x04not to be unpickled")
    with pytest.raises(WeightsError, match=r"refusing .*: zoo never unpickles.*save_file\(model"):
        zoo.load_weights(tmp_path / filename, models.create("cnn"))


def test_missing_and_unreadable_files_name_the_path(tmp_path):
    for filename in ("absent.safetensors", "absent.weights.h5"):
        with pytest.raises(WeightsError, match=f"no weight file .*{filename}"):
            zoo.load_weights(tmp_path / filename, models.create("cnn"))
    (tmp_path / "bad.weights.h5").write_bytes(b"nonsense")
    with pytest.raises(WeightsError, match="cannot read .*bad.weights.h5 as a Keras weights"):
        zoo.load_weights(tmp_path / "bad.weights.h5", models.create("cnn"))
    with pytest.raises(WeightsError, match=r"cannot tell what .*weights.npz holds.*source="):
        zoo.load_weights(tmp_path / "weights.npz", models.create("cnn"))


@pytest.fixture(scope="module")
def resnet_files(tmp_path_factory):
    """State dicts of a ResNet-18 and a ResNet-34 (width 8, 32x32, 10 classes)."""
    folder = tmp_path_factory.mktemp("resnets")
    torch.manual_seed(0)
    for depth, blocks in ((18, (2, 2, 2, 2)), (34, (3, 4, 6, 3))):
        net = TorchResNet(TorchBasic, blocks, 10, 3, 8)
        save_file(net.state_dict(), folder / f"resnet{depth}.safetensors")
    return folder


def resnet_model(depth, **options):
    options = {"input_shape": (32, 32, 3), "num_classes": 10, "width": 8} | options
    return models.create(f"resnet{depth}", **options)


def test_a_file_for_another_depth_lists_the_leaves_that_differ(resnet_files):
    fewer = "in this model, not in the weight file"
    with pytest.raises(WeightsError) as error:
        zoo.load_weights(resnet_files / "resnet18.safetensors", resnet_model(34))
    message = str(error.value)
    assert "\n" not in message
    assert "does not fit this ResNet (80 leaves differ; it holds a ResNet of depth 18)" in message
    assert f"batch_stats/stage0_block2/conv1/bn/mean: {fewer}" in message
    with pytest.raises(WeightsError, match="it holds a ResNet of depth 34.*in the weight file, "):
        zoo.load_weights(resnet_files / "resnet34.safetensors", resnet_model(18))  # never truncated
    with pytest.raises(WeightsError, match=r"2 leaves differ\): params/head/bias: weight file "):
        zoo.load_weights(resnet_files / "resnet18.safetensors", resnet_model(18, num_classes=7))
    with pytest.raises(WeightsError, match="does not fit this VGG: it has fewer layers"):
        zoo.load_weights(resnet_files / "resnet18.safetensors", models.create("vgg11"))
    with pytest.raises(WeightsError, match="no PyTorch importer for MobileNetV2; there are for"):
        zoo.load_weights(resnet_files / "resnet18.safetensors", models.create("mobilenet_v2"))
    with pytest.raises(TypeError, match=r"zoo.models.create\('resnet18', ...\), not its name"):
        zoo.load_weights(resnet_files / "resnet18.safetensors", "resnet18")


def test_a_model_without_its_top_leaves_the_classifier_unread(resnet_files, tmp_path):
    trunk = zoo.load_weights(
        resnet_files / "resnet34.safetensors", resnet_model(34, include_top=False)
    )
    full = zoo.load_weights(resnet_files / "resnet34.safetensors", resnet_model(34))
    assert "head" not in trunk["params"]
    full["params"].pop("head")
    chex.assert_trees_all_equal(trunk, full)
    shutil.copy(resnet_files / "resnet34.safetensors", tmp_path / "resnet34.st")
    named = zoo.load_weights(tmp_path / "resnet34.st", resnet_model(34), source="torch")
    chex.assert_trees_all_equal(named["params"]["stem"], full["params"]["stem"])


def test_a_keras_file_for_another_depth_names_it(keras, tmp_path):
    with jax.numpy_rank_promotion("allow"):
        keras_vgg(keras, (32, 32, 3), 4, (16, 16), 10).save_weights(tmp_path / "m.weights.h5")
    vgg16 = models.create("vgg16", input_shape=(32, 32, 3), num_classes=10, width=4, dense=(16, 16))
    with pytest.raises(WeightsError, match=r"leaves differ; it holds a VGG of depth 11\)"):
        zoo.load_weights(tmp_path / "m.weights.h5", vgg16)
    with pytest.raises(WeightsError, match="does not fit this MobileNetV2: it has no 'Conv1'"):
        zoo.load_weights(tmp_path / "m.weights.h5", models.create("mobilenet_v2"))
