"""The ConvLSTM classifier: its layers in order, lengths, dropout, option errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import models
from zoo.layers.convlstm import ConvLSTM

SHAPE = (3, 5, 6, 2)  # (steps, height, width, channels): distinct sizes
X = np.random.default_rng(0).normal(size=(2, *SHAPE)).astype(np.float32)


def test_defaults_fit_the_moving_digits():
    model = models.create("convlstm")
    assert tuple(model.input_shape) == (8, 16, 16, 1) and model.num_classes == 10
    assert models.task("convlstm") == "classify" and models.takes_lengths("convlstm")
    x = models.example_input("convlstm", batch_size=3)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.eval_shape(model.apply, variables, x).shape == (3, 10)


@pytest.mark.parametrize("pool, reduce", [("max", np.max), ("avg", np.mean)])
def test_logits_are_the_stacked_layers_pooled_then_dense(pool, reduce):
    model = models.create("convlstm", input_shape=SHAPE, filters=(3, 4), num_classes=5, pool=pool)
    variables = model.init(jax.random.key(0), X)
    params = variables["params"]
    assert params["convlstm_0"]["kernel"].shape == (3, 3, 2, 12)
    assert params["convlstm_1"]["recurrent_kernel"].shape == (3, 3, 4, 16)
    sequence, _ = ConvLSTM(3, return_sequences=True).apply({"params": params["convlstm_0"]}, X)
    last, _ = ConvLSTM(4).apply({"params": params["convlstm_1"]}, sequence)  # (B, H, W, 4)
    dense = params["Dense_0"]
    expected = reduce(np.asarray(last), axis=(1, 2)) @ dense["kernel"] + dense["bias"][None]
    np.testing.assert_allclose(model.apply(variables, X), expected, rtol=1e-5, atol=1e-6)


def test_a_padded_clip_gives_the_logits_of_the_clip_alone():
    model = models.create("convlstm", input_shape=(None, *SHAPE[1:]), filters=(3, 2))
    variables = model.init(jax.random.key(0), X)
    logits = model.apply(variables, X, np.array([3, 2]))
    alone = model.apply(variables, X[1:, :2])
    np.testing.assert_allclose(logits[1], alone[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(logits[1], model.apply(variables, X[1:])[0])  # the padding mattered


def test_lengths_follow_the_batch_axes():
    model = models.create("convlstm", input_shape=SHAPE, filters=(2,))
    variables = model.init(jax.random.key(0), X)
    batched = model.apply(variables, X.reshape(1, 2, *SHAPE), np.array([[3, 2]]))
    np.testing.assert_allclose(batched[0], model.apply(variables, X, np.array([3, 2])), atol=1e-6)
    with pytest.raises(ValueError, match=r"lengths must have the batch shape \(2,\)"):
        model.apply(variables, X, np.array([3]))


def test_dropout_applies_in_training_only():
    model = models.create("convlstm", input_shape=SHAPE, filters=(3, 2), dropout=0.5)
    variables = model.init(jax.random.key(0), X)
    evaluated = model.apply(variables, X)
    np.testing.assert_array_equal(evaluated, model.apply(variables, X))
    trained = [
        model.apply(variables, X, train=True, rngs={"dropout": jax.random.key(seed)})
        for seed in (1, 2)
    ]
    assert not np.allclose(trained[0], trained[1]) and not np.allclose(trained[0], evaluated)


def test_bfloat16_keeps_float32_params():
    model = models.create("convlstm", input_shape=SHAPE, filters=(2,), dtype=jnp.bfloat16)
    variables = model.init(jax.random.key(0), X)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert model.apply(variables, X).dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "options, match",
    [
        ({"input_shape": (5, 6, 2)}, r"input_shape must be \(steps, height, width, channels\)"),
        ({"filters": ()}, "filters is empty"),
        ({"filters": (2, 0)}, "filters must be positive, got 0"),
        ({"padding": "CAUSAL"}, "padding must be one of SAME, VALID"),
        ({"pool": "min"}, "pool must be one of max, avg, got 'min'"),
        ({"kernel_size": (3, 3, 3)}, "kernel_size must be two positive ints"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_options_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        models.create("convlstm", **{"input_shape": SHAPE, **options})


def test_a_wrong_frame_shape_is_named():
    model = models.create("convlstm", input_shape=SHAPE, filters=(2,))
    with pytest.raises(ValueError, match=r"convlstm expects input of shape \(batch, 3, 5, 6, 2\)"):
        model.init(jax.random.key(0), X[..., :1])
