"""Every registered model: shapes with and without jit, unbatched input, grad and vmap."""

import dataclasses
import re
from collections.abc import Sequence
from typing import Any, Literal, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import models
from zoo.models import validate
from zoo.training.config import PRESETS

# (name, options, one example's shape, dtype); integer dtypes are token ids.
CONFIGS = [
    ("cnn", {}, (28, 28, 1), jnp.float32),
    ("cnn", {"num_classes": 3, "input_shape": (32, 30, 2)}, (32, 30, 2), jnp.float32),
    ("convnet", {"input_shape": (16, 12, 3)}, (16, 12, 3), jnp.float32),
    (
        "convnet",
        {"input_shape": (40, 2), "pool": "avg", "activation": "tanh"},
        (40, 2),
        jnp.float32,
    ),
    (
        "convnet",
        {"input_shape": (12, 8, 1), "pool": None, "activation": "sigmoid"},
        (12, 8, 1),
        jnp.float32,
    ),
    (
        "convnet",
        {"input_shape": (16, 16, 1), "batch_norm": True, "dropout": 0.3},
        (16, 16, 1),
        jnp.float32,
    ),
    (
        "convnet",
        {"input_shape": (20, 3), "residual": True, "batch_norm": True},
        (20, 3),
        jnp.float32,
    ),
    (
        "convnet",
        {"input_shape": (8, 10, 2), "residual": True, "features": (4, 6, 5)},
        (8, 10, 2),
        jnp.float32,
    ),
    ("rnn", {"input_shape": (7, 3), "hidden_sizes": (5, 4)}, (7, 3), jnp.float32),
    (
        "birnn",
        {"input_shape": (None, 2), "hidden_sizes": (3,), "activation": "relu"},
        (6, 2),
        jnp.float32,
    ),
    ("lstm", {"input_shape": (7, 3), "hidden_sizes": (5, 4)}, (7, 3), jnp.float32),
    (
        "gru",
        {"input_shape": (None, 3), "hidden_sizes": (6,), "reset_after": False},
        (5, 3),
        jnp.float32,
    ),
    (
        "bilstm",
        {"input_shape": (6, 2), "hidden_sizes": (4, 3), "dropout": 0.2},
        (6, 2),
        jnp.float32,
    ),
    ("bigru", {"input_shape": (6, 2), "hidden_sizes": (3,)}, (6, 2), jnp.float32),
    ("tagger", {"vocab_size": 9, "hidden_sizes": (4, 3), "num_classes": 3}, (6,), jnp.int32),
    (
        "tagger",
        {"vocab_size": None, "input_shape": (None, 2), "cell": "gru", "bidirectional": False},
        (5, 2),
        jnp.float32,
    ),
    ("charlm", {"num_classes": 11, "embed_dim": 4, "hidden_sizes": (6, 5)}, (9,), jnp.int32),
    ("charlm", {"num_classes": 7, "cell": "gru", "hidden_sizes": (5,)}, (4,), jnp.int32),
    (
        "cnn_lstm",
        {"input_shape": (3, 8, 6, 1), "features": (4,), "hidden_sizes": (5,)},
        (3, 8, 6, 1),
        jnp.float32,
    ),
    (
        "convlstm",
        {"input_shape": (3, 5, 6, 2), "filters": (3, 2), "dropout": 0.2},
        (3, 5, 6, 2),
        jnp.float32,
    ),
    (
        "forecast",
        {"input_shape": (10, 2), "horizon": 3, "hidden_sizes": (4,)},
        (10, 2),
        jnp.float32,
    ),
]
# The CNN families at small widths, odd sizes where the layout allows (pools pad, strides round up).
CONFIGS += [
    ("lenet5", {"num_classes": 4, "input_shape": (28, 28, 1)}, (28, 28, 1), jnp.float32),
    ("lenet5_relu", {"input_shape": (36, 33, 3)}, (36, 33, 3), jnp.float32),
    ("vgg11", {"input_shape": (9, 11, 3), "width": 2, "dense": (5,)}, (9, 11, 3), jnp.float32),
    ("vgg11_bn", {"input_shape": (8, 8, 1), "width": 2, "dropout": 0.2}, (8, 8, 1), jnp.float32),
    ("vgg16", {"input_shape": (8, 8, 1), "width": 1, "dense": (4,)}, (8, 8, 1), jnp.float32),
    ("vgg16_bn", {"input_shape": (8, 8, 1), "width": 1, "dense": ()}, (8, 8, 1), jnp.float32),
    ("resnet18", {"input_shape": (17, 15, 3), "width": 2}, (17, 15, 3), jnp.float32),
    ("resnet34", {"input_shape": (8, 8, 1), "width": 1, "stem": "cifar"}, (8, 8, 1), jnp.float32),
    ("resnet50", {"input_shape": (16, 16, 3), "width": 2}, (16, 16, 3), jnp.float32),
    (
        "resnet50",
        {"input_shape": (16, 16, 3), "width": 2, "keras_layout": True, "include_top": False},
        (16, 16, 3),
        jnp.float32,
    ),
    ("resnet20", {"input_shape": (9, 9, 2), "width": 2}, (9, 9, 2), jnp.float32),
    ("mobilenet_v2", {"input_shape": (19, 16, 3), "alpha": 0.1}, (19, 16, 3), jnp.float32),
]
# The autoencoders on odd sizes their decoders crop back to.
CONFIGS += [
    ("autoencoder", {"input_shape": (9, 7, 2), "features": (3, 4)}, (9, 7, 2), jnp.float32),
    ("vae", {"input_shape": (5, 8, 1), "features": (4,), "latent_dim": 3}, (5, 8, 1), jnp.float32),
]
# The temporal convolutional networks, the classifier on sequences of any length.
CONFIGS += [
    ("tcn", {"input_shape": (None, 3), "channels": (4, 5), "dropout": 0.2}, (7, 3), jnp.float32),
    ("tcn_forecast", {"input_shape": (8, 2), "horizon": 3, "channels": (4,)}, (8, 2), jnp.float32),
]
# The encoder-decoder, without targets: greedy decoding of max_length steps.
CONFIGS += [
    (
        "seq2seq",
        {"num_classes": 7, "vocab_size": 5, "encoder_sizes": (4,), "hidden_size": 5},
        (6,),
        jnp.int32,
    ),
]
IDS = [f"{i}-{name}" for i, (name, *_) in enumerate(CONFIGS)]
# Per-config transformations for one config of each family's block kinds; every config still
# goes through jit, eager dispatch and the option checks.
FAMILY_SIBLINGS = {"resnet18", "resnet34", "vgg11", "vgg16", "vgg16_bn", "lenet5_relu"}
TRANSFORMED = [
    pytest.param(*config, id=id_)
    for config, id_ in zip(CONFIGS, IDS, strict=True)
    if config[0] not in FAMILY_SIBLINGS
]


def example(shape, dtype, batch, seed=0):
    """NumPy inputs: eager `jax.random` compiles a program for every new shape."""
    rng = np.random.default_rng(seed)
    if jnp.issubdtype(dtype, jnp.integer):
        return rng.integers(0, 4, (*batch, *shape)).astype(dtype)
    return rng.normal(size=(*batch, *shape)).astype(dtype)


def init(model, shape, dtype):
    """Variables from one example: every test inits each config on the same input, so the
    persistent compilation cache compiles each init once (resnet50's takes 6 s)."""
    return jax.jit(model.init)(jax.random.key(0), example(shape, dtype, (1,)))


def output_shape(model, shape):
    if isinstance(model, models.CharLM | models.Tagger):
        return (shape[0], model.num_classes)  # logits at every step
    if isinstance(model, models.Seq2Seq):
        return (model.max_length, model.num_classes)  # logits of the greedy decoding's steps
    if isinstance(model, models.Forecaster | models.TCNForecaster):
        return (model.horizon,)
    if isinstance(model, models.ResNet) and not model.include_top:
        return (model.width * 8 * 4,)  # the pooled last stage of a bottleneck ResNet
    if isinstance(model, models.ConvAutoencoder | models.VAE):
        return tuple(shape)  # the reconstruction
    return (model.num_classes,)


def _main(outputs):
    """A VAE's reconstruction, or the one output of any other model."""
    return outputs.reconstruction if isinstance(outputs, models.VAEOutput) else outputs


def test_every_registered_model_is_covered():
    assert {name for name, *_ in CONFIGS} == set(models.names())


def test_output_shapes_eagerly_for_a_batch_of_one():
    # One configuration of each model class: eager dispatch costs a minute for all of them.
    first_of_each = {type(models.create(c[0], **c[1])): c for c in reversed(CONFIGS)}
    for name, options, shape, dtype in first_of_each.values():
        model = models.create(name, **options)
        y = _main(model.apply(init(model, shape, dtype), example(shape, dtype, (1,), seed=1)))
        chex.assert_shape(y, (1, *output_shape(model, shape)))
        assert np.isfinite(np.asarray(y)).all(), name


@pytest.mark.parametrize("name, options, shape, dtype", CONFIGS, ids=IDS)
def test_output_shapes_under_jit_batched_and_unbatched(name, options, shape, dtype):
    model = models.create(name, **options)
    # Two batch axes, but one for the language model: its ids (B, T, 1) are refused.
    batch = (6,) if name == "charlm" else (2, 3)
    x = example(shape, dtype, batch)
    variables = init(model, shape, dtype)
    apply = jax.jit(model.apply)
    y = _main(apply(variables, x))
    assert y.shape == (*batch, *output_shape(model, shape))
    assert np.isfinite(np.asarray(y)).all()
    last = tuple(size - 1 for size in batch)
    np.testing.assert_allclose(
        _main(apply(variables, x[last])), np.asarray(y)[last], rtol=1e-5, atol=1e-6
    )


def _loss(model, variables):
    def loss(params, x):
        outputs = model.apply({**variables, "params": params}, x)  # a VAE's mean and logvar too
        return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(outputs))

    return loss


@pytest.mark.parametrize("name, options, shape, dtype", TRANSFORMED)
def test_params_are_plain_pytrees_for_grad(name, options, shape, dtype):
    model = models.create(name, **options)
    # At widths of 1 or 2 every relu of a block can be off for some inputs (this one for 4
    # examples of numpy's seed 0 in resnet50); these are not such.
    x = example(shape, dtype, (4,), seed=1)
    variables = init(model, shape, dtype)
    # A point near init, so zero-initialised layers (the forecaster's head) do not block gradients.
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda p: p + (0.01 * rng.normal(size=p.shape)).astype(p.dtype),
        jax.device_get(variables["params"]),
    )
    grads = jax.jit(jax.grad(_loss(model, variables)))(params, x)
    chex.assert_trees_all_equal_shapes(grads, variables["params"])
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(grads))
    unused = [jax.tree_util.keystr(path) for path, g in leaves if not np.abs(g).sum() > 0]
    assert not unused, f"no gradient reaches {unused}"  # every parameter matters


@pytest.mark.parametrize("index", [0, 5, 8, 10, 14], ids=lambda i: IDS[i])
def test_vmap_per_example_gradients_and_ensembles(key, index):
    name, options, shape, dtype = CONFIGS[index]
    model = models.create(name, **options)
    x = example(shape, dtype, (4,))
    variables = init(model, shape, dtype)
    loss = _loss(model, variables)
    grads = jax.jit(jax.grad(loss))(variables["params"], x)
    # Per-example gradients with vmap add up to the batch gradient (eval mode is per-example).
    per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(variables["params"], x)
    summed = jax.tree.map(lambda g: g.sum(0), jax.device_get(per_example))
    chex.assert_trees_all_close(summed, jax.device_get(grads), rtol=1e-4, atol=1e-5)
    # An ensemble: vmap init over keys gives stacked, distinct parameters.
    ensemble = jax.jit(jax.vmap(model.init, in_axes=(0, None)))(jax.random.split(key, 3), x)
    kernel = max(jax.tree.leaves(ensemble["params"]), key=lambda leaf: leaf.size)
    kernel = np.asarray(kernel)
    assert kernel.shape[0] == 3 and not np.allclose(kernel[0], kernel[1])


@pytest.mark.parametrize(
    "name", ["rnn", "birnn", "lstm", "bilstm", "charlm", "cnn_lstm", "forecast", "convnet"]
)
def test_reset_after_is_refused_where_there_is_no_gru(name):
    assert "reset_after" not in models.options(name)
    owners = r"\(it applies to: bigru, gru, tagger\)"  # the tagger's cell is an option
    with pytest.raises(ValueError, match=rf"model '{name}' has no option reset_after {owners}"):
        models.create(name, reset_after=False)


def test_an_option_for_another_cell_is_refused_when_the_cell_is_an_option(monkeypatch):
    monkeypatch.setitem(models._MODELS, "any_cell", (models.RNNClassifier, {}))
    with pytest.raises(
        ValueError, match="model 'any_cell' option reset_after applies only with cell='gru'"
    ):
        models.create("any_cell", input_shape=(4, 2), reset_after=False)
    with pytest.raises(
        ValueError, match="model 'any_cell' option activation applies only with cell='rnn'"
    ):
        models.create("any_cell", input_shape=(4, 2), activation="relu")
    model = models.create("any_cell", input_shape=(4, 2), cell="gru", reset_after=False)
    assert not model.reset_after
    assert models.create("any_cell", input_shape=(4, 2), cell="rnn", activation="relu").activation


def test_the_simple_rnn_takes_relu_and_refuses_other_activations():
    assert models.options("rnn")["activation"].default == "tanh"
    assert "activation" not in models.options("lstm")
    with pytest.raises(ValueError, match="unknown activation 'gelu'; choose from: tanh, relu"):
        models.create("rnn", activation="gelu")


# Options of one cell, refused with another where the cell is an option (a tagger's).
CELL_OPTIONS = {"activation": "rnn", "reset_after": "gru"}


@pytest.mark.parametrize("name, options, shape, dtype", CONFIGS, ids=IDS)
def test_every_listed_option_is_accepted(name, options, shape, dtype):
    model = models.create(name, **options)
    fields = {f.name: f for f in dataclasses.fields(model)}
    cell = getattr(model, "cell", None)
    for option in models.options(name):
        if option in CELL_OPTIONS and CELL_OPTIONS[option] != cell:
            continue
        if fields[option].default is not dataclasses.MISSING:
            models.create(name, **{**options, option: fields[option].default})


def test_list_options_become_tuples_so_models_are_hashable():
    model = models.create("convnet", input_shape=[16, 12, 3], features=[4, 6], dense=[5])
    assert (model.input_shape, model.features, model.dense) == ((16, 12, 3), (4, 6), (5,))
    same = models.create("convnet", input_shape=(16, 12, 3), features=(4, 6), dense=(5,))
    assert hash(model) == hash(same) and model == same


# The first config of each registered model but a family's siblings (their layers are those of
# the others): an empty batch compiles each once more.
FIRST_OF_EACH_NAME = {}
for _config in CONFIGS:
    if _config[0] not in FAMILY_SIBLINGS:
        FIRST_OF_EACH_NAME.setdefault(_config[0], _config)


@pytest.mark.parametrize(
    "name, options, shape, dtype", FIRST_OF_EACH_NAME.values(), ids=FIRST_OF_EACH_NAME
)
def test_an_empty_batch_gives_an_empty_output(name, options, shape, dtype):
    # A flatten as `reshape(B, -1)` divided by the batch size (the cnn's ZeroDivisionError).
    model = models.create(name, **options)
    variables = init(model, shape, dtype)
    y = _main(jax.jit(model.apply)(variables, example(shape, dtype, (0,))))
    assert y.shape == (0, *output_shape(model, shape))


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("lstm", {"hidden_sizes": 64}, "hidden_sizes must be a tuple or list of int, got 64 (int)"),
        ("cnn", {"num_classes": "10"}, "num_classes must be int, got '10' (str)"),
        ("cnn", {"num_classes": 2.5}, "num_classes must be int, got 2.5 (float)"),
        ("cnn", {"num_classes": True}, "num_classes must be int, got True (bool)"),
        ("convnet", {"features": 32}, "features must be a tuple or list of int, got 32 (int)"),
        ("convnet", {"features": (3, 6.0)}, "features must be a tuple or list of int, got (3, 6.0"),
        ("convnet", {"batch_norm": 1}, "batch_norm must be bool, got 1 (int)"),
        ("convnet", {"pool": 2}, "pool must be str or None, got 2 (int)"),
        ("vgg11", {"dense": 512}, "dense must be a tuple or list of int, got 512 (int)"),
        ("lstm", {"dropout": "0.2"}, "dropout must be float, got '0.2' (str)"),
        (
            "tagger",
            {"input_shape": (None, "4")},
            "input_shape must be a tuple or list of (int or None) or None, got (None, '4') (tuple)",
        ),
        ("convlstm", {"kernel_size": 3}, "kernel_size must be a tuple or list of int, got 3"),
    ],
)
def test_an_option_of_the_wrong_type_is_refused_naming_it(name, options, match):
    with pytest.raises(ValueError, match=re.escape(f"model '{name}' option {match}")):
        models.create(name, **options)


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("cnn", {"num_classes": 0}, "num_classes must be >= 1, got 0"),
        ("cnn", {"num_classes": -3}, "num_classes must be >= 1, got -3"),
        ("convnet", {"kernel_size": 0}, "kernel_size must be >= 1, got 0"),
        ("convnet", {"pool_size": 0}, "pool_size must be >= 1, got 0"),
        ("convnet", {"dense": [8, 0]}, r"dense must hold sizes >= 1, got [8, 0]"),
        ("convnet", {"input_shape": (9, 0, 1)}, "input_shape must hold sizes >= 1, got (9, 0, 1)"),
        ("forecast", {"horizon": 0}, "horizon must be >= 1, got 0"),
        ("tcn_forecast", {"horizon": -1}, "horizon must be >= 1, got -1"),
        ("lstm", {"unroll": 0}, "unroll must be >= 1, got 0"),
        ("tagger", {"vocab_size": 0}, "vocab_size must be >= 1, got 0"),
        ("resnet20", {"num_classes": 0}, "num_classes must be >= 1, got 0"),
    ],
)
def test_a_size_below_one_is_refused_naming_it(name, options, match):
    with pytest.raises(ValueError, match=re.escape(f"model '{name}' option {match}")):
        models.create(name, **options)


def test_options_are_taken_as_python_json_and_numpy_give_them():
    # Ints where floats are annotated, lists where tuples, numpy sizes (a dataset's), None.
    model = models.create(
        "convnet", input_shape=[np.int64(8), 8, 1], num_classes=np.int32(3), dropout=0, pool=None
    )
    assert (model.input_shape, model.num_classes, model.dropout) == ((8, 8, 1), 3, 0)
    assert models.create("tagger", vocab_size=None, input_shape=[None, 2]).input_shape == (None, 2)
    assert models.create("mobilenet_v2", alpha=1).alpha == 1


def test_the_models_own_checks_keep_their_messages():
    with pytest.raises(ValueError, match=r"^dropout must be in \[0, 1\), got 2.0$"):
        models.create("lstm", dropout=2.0)
    with pytest.raises(ValueError, match=r"^hidden_sizes must be positive, got \(\)$"):
        models.create("lstm", hidden_sizes=())


@pytest.mark.parametrize("name", models.names())
def test_every_model_creates_with_its_preset_options(name):
    preset = PRESETS.get(name, {}).get("model_options", {})
    assert models.create(name, **preset) == models.create(name, **dict(preset))
    json_like = {key: list(v) if isinstance(v, tuple) else v for key, v in preset.items()}
    assert models.create(name, **json_like) == models.create(name, **preset)


@pytest.mark.parametrize(
    "value, annotation, expected",
    [
        ((1, "a"), tuple[int, str], True),
        ([1, "a"], tuple[int, str], True),
        ((1, 2), tuple[int, str], False),
        ((1,), tuple[int, str], False),
        ((1, 2, 3), tuple[int, ...], True),
        ((1, None), tuple[int | None, ...], True),
        ("max", Literal["max", "avg"], True),
        ("min", Literal["max", "avg"], False),
        (None, Optional[int], True),  # noqa: UP045 - typing.Union, not X | None's UnionType
        (2, int | None, True),
        (2.0, int | None, False),
        (np.float32(0.5), float, True),
        (np.bool_(True), bool, True),
        (np.bool_(True), int, False),
        (0, bool, False),
        ("ab", Sequence[str], False),  # a string is no sequence of options
        (object(), Any, True),
    ],
)
def test_annotations_the_registry_checks(value, annotation, expected):
    assert validate.matches(value, annotation) == expected


def test_annotations_in_words():
    assert validate.describe(tuple[int, str]) == "a tuple or list (int, str)"
    assert validate.describe(Literal["max", "avg"]) == "one of 'max', 'avg'"
    assert validate.describe(Sequence[int | None] | None) == (
        "a tuple or list of (int or None) or None"
    )
