"""Every registered model: shapes with and without jit, unbatched input, grad and vmap."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import models

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
    ("charlm", {"num_classes": 11, "embed_dim": 4, "hidden_sizes": (6, 5)}, (9,), jnp.int32),
    ("charlm", {"num_classes": 7, "cell": "gru", "hidden_sizes": (5,)}, (4,), jnp.int32),
    (
        "cnn_lstm",
        {"input_shape": (3, 8, 6, 1), "features": (4,), "hidden_sizes": (5,)},
        (3, 8, 6, 1),
        jnp.float32,
    ),
    (
        "forecast",
        {"input_shape": (10, 2), "horizon": 3, "hidden_sizes": (4,)},
        (10, 2),
        jnp.float32,
    ),
]
IDS = [f"{i}-{name}" for i, (name, *_) in enumerate(CONFIGS)]


def example(shape, dtype, batch, seed=0):
    key = jax.random.key(seed)
    if jnp.issubdtype(dtype, jnp.integer):
        return jax.random.randint(key, (*batch, *shape), 0, 4, dtype)
    return jax.random.normal(key, (*batch, *shape), dtype)


def output_shape(model, shape):
    if isinstance(model, models.CharLM):
        return (*shape, model.num_classes)  # logits at every step
    if isinstance(model, models.Forecaster):
        return (model.horizon,)
    return (model.num_classes,)


def test_every_registered_model_is_covered():
    assert {name for name, *_ in CONFIGS} == set(models.names())


def _check_output_shapes(apply, batch_sizes, configs=CONFIGS):
    for name, options, shape, dtype in configs:
        model = models.create(name, **options)
        variables = jax.jit(model.init)(jax.random.key(0), example(shape, dtype, (1,)))
        for batch in batch_sizes:
            y = apply(model)(variables, example(shape, dtype, (batch,), seed=batch))
            chex.assert_shape(y, (batch, *output_shape(model, shape)))
            chex.assert_tree_all_finite(y)


def test_output_shapes_eagerly_for_a_batch_of_one():
    # One configuration of each model class: eager dispatch costs a minute for all of them.
    first_of_each = {type(models.create(c[0], **c[1])): c for c in reversed(CONFIGS)}
    _check_output_shapes(lambda model: model.apply, (1,), list(first_of_each.values()))


def test_output_shapes_under_jit():
    _check_output_shapes(lambda model: jax.jit(model.apply), (3,))


@pytest.mark.parametrize("name, options, shape, dtype", CONFIGS, ids=IDS)
def test_unbatched_and_multi_batch_inputs(key, name, options, shape, dtype):
    model = models.create(name, **options)
    x = example(shape, dtype, (2, 3))
    variables = jax.jit(model.init)(key, x)
    apply = jax.jit(model.apply)
    y = apply(variables, x)
    assert y.shape == (2, 3, *output_shape(model, shape))
    np.testing.assert_allclose(apply(variables, x[1, 2]), y[1, 2], rtol=1e-5, atol=1e-6)


def _loss(model, variables):
    def loss(params, x):
        return jnp.sum(jnp.sin(model.apply({**variables, "params": params}, x)))

    return loss


@pytest.mark.parametrize("name, options, shape, dtype", CONFIGS, ids=IDS)
def test_params_are_plain_pytrees_for_grad(key, name, options, shape, dtype):
    model = models.create(name, **options)
    x = example(shape, dtype, (4,))
    variables = jax.jit(model.init)(key, x)
    # A point near init, so zero-initialised layers (the forecaster's head) do not block gradients.
    leaves, treedef = jax.tree.flatten(variables["params"])
    noise = [
        0.01 * jax.random.normal(jax.random.fold_in(key, i), p.shape) for i, p in enumerate(leaves)
    ]
    params = jax.tree.unflatten(treedef, [p + n for p, n in zip(leaves, noise, strict=True)])
    grads = jax.jit(jax.grad(_loss(model, variables)))(params, x)
    chex.assert_trees_all_equal_shapes(grads, variables["params"])
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))  # every param matters


@pytest.mark.parametrize("index", [0, 5, 8, 12], ids=lambda i: IDS[i])
def test_vmap_per_example_gradients_and_ensembles(key, index):
    name, options, shape, dtype = CONFIGS[index]
    model = models.create(name, **options)
    x = example(shape, dtype, (4,))
    variables = jax.jit(model.init)(key, x)
    loss = _loss(model, variables)
    grads = jax.jit(jax.grad(loss))(variables["params"], x)
    # Per-example gradients with vmap add up to the batch gradient (eval mode is per-example).
    per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(variables["params"], x)
    chex.assert_trees_all_close(
        jax.tree.map(lambda g: g.sum(0), per_example), grads, rtol=1e-4, atol=1e-5
    )
    # An ensemble: vmap init over keys gives stacked, distinct parameters.
    ensemble = jax.jit(jax.vmap(model.init, in_axes=(0, None)))(jax.random.split(key, 3), x)
    kernel = max(jax.tree.leaves(ensemble["params"]), key=lambda leaf: leaf.size)
    assert kernel.shape[0] == 3 and not jnp.allclose(kernel[0], kernel[1])


@pytest.mark.parametrize("name", ["lstm", "bilstm", "charlm", "cnn_lstm", "forecast", "convnet"])
def test_reset_after_is_refused_where_there_is_no_gru(name):
    assert "reset_after" not in models.options(name)
    with pytest.raises(
        ValueError, match=rf"model '{name}' has no option reset_after \(it applies to: bigru, gru\)"
    ):
        models.create(name, reset_after=False)


def test_an_option_for_another_cell_is_refused_when_the_cell_is_an_option(monkeypatch):
    monkeypatch.setitem(models._MODELS, "rnn", (models.RNNClassifier, {}))
    with pytest.raises(
        ValueError, match="model 'rnn' option reset_after applies only with cell='gru'"
    ):
        models.create("rnn", input_shape=(4, 2), reset_after=False)
    assert not models.create("rnn", input_shape=(4, 2), cell="gru", reset_after=False).reset_after


@pytest.mark.parametrize("name, options, shape, dtype", CONFIGS, ids=IDS)
def test_every_listed_option_is_accepted(name, options, shape, dtype):
    fields = {f.name: f for f in dataclasses.fields(models.create(name, **options))}
    for option in models.options(name):
        if fields[option].default is not dataclasses.MISSING:
            models.create(name, **{**options, option: fields[option].default})


def test_list_options_become_tuples_so_models_are_hashable():
    model = models.create("convnet", input_shape=[16, 12, 3], features=[4, 6], dense=[5])
    assert (model.input_shape, model.features, model.dense) == ((16, 12, 3), (4, 6), (5,))
    same = models.create("convnet", input_shape=(16, 12, 3), features=(4, 6), dense=(5,))
    assert hash(model) == hash(same) and model == same
