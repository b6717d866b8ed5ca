import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import models


def test_seed_cnn_has_the_keras_parameter_count(key):
    # keras.io "Simple MNIST convnet"-style model summary: Total params: 93,322.
    variables = models.create("cnn").init(key, jnp.zeros((1, 28, 28, 1)))
    assert sum(p.size for p in jax.tree.leaves(variables)) == 93_322


def _numpy_conv_valid(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Cross-correlation as Keras/Flax define it, by explicit sums over the kernel taps."""
    kh, kw = kernel.shape[:2]
    out_h, out_w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            out += x[:, i : i + out_h, j : j + out_w, :] @ kernel[i, j]
    return out + bias


def _numpy_max_pool(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    x = x[:, :h, :w]
    return np.maximum.reduce([x[:, i::2, j::2] for i in range(2) for j in range(2)])


def test_seed_cnn_matches_numpy_reference(key):
    model = models.create("cnn")
    x = jax.random.uniform(key, (3, 28, 28, 1))
    params = jax.tree.map(np.asarray, model.init(key, x)["params"])
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    h = np.asarray(x, np.float64)
    for layer, pool in (("Conv_0", True), ("Conv_1", True), ("Conv_2", False)):
        h = relu(_numpy_conv_valid(h, params[layer]["kernel"], params[layer]["bias"]))
        h = _numpy_max_pool(h) if pool else h
    h = h.reshape(3, -1)
    h = relu(h @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    expected = h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
    np.testing.assert_allclose(model.apply({"params": params}, x), expected, rtol=1e-4, atol=1e-5)


def test_dropout_is_random_in_training_and_off_in_evaluation(key):
    model = models.create("convnet", input_shape=(12, 12, 1), dropout=0.5)
    x = jax.random.normal(key, (4, 12, 12, 1))
    variables = model.init(key, x)
    eval_a, eval_b = model.apply(variables, x), model.apply(variables, x, train=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train = [
        model.apply(variables, x, train=True, rngs={"dropout": k}) for k in jax.random.split(key)
    ]
    assert not np.allclose(train[0], train[1])
    assert not np.allclose(train[0], eval_a)
    again = model.apply(variables, x, train=True, rngs={"dropout": jax.random.split(key)[0]})
    np.testing.assert_array_equal(train[0], again)


def test_batch_norm_uses_batch_stats_in_training_and_running_stats_in_evaluation(key):
    model = models.create("convnet", input_shape=(8, 8, 2), batch_norm=True)
    x = jax.random.normal(key, (6, 8, 8, 2)) * 3 + 1
    variables = model.init(key, x)
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (6, 10)
    before, after = variables["batch_stats"]["BatchNorm_0"], updates["batch_stats"]["BatchNorm_0"]
    assert not np.allclose(before["mean"], after["mean"])  # training updates running stats
    # In training an example's output depends on the rest of the batch; in evaluation it does not.
    other = jnp.concatenate([x[:1], jax.random.normal(key, (5, 8, 8, 2))])
    train_first = lambda batch: model.apply(  # noqa: E731
        variables, batch, train=True, mutable=["batch_stats"]
    )[0][0]
    assert not np.allclose(train_first(x), train_first(other))
    np.testing.assert_allclose(
        model.apply(variables, x)[0], model.apply(variables, other)[0], rtol=1e-5
    )


@pytest.mark.parametrize(
    "x, match",
    [
        (jnp.zeros((2, 28, 28)), r"expects input of shape \(batch, 28, 28, 1\)"),
        (jnp.zeros((2, 28, 28, 3)), r"expects input of shape \(batch, 28, 28, 1\)"),
        (jnp.zeros((2, 32, 32, 1)), r"has shape \(2, 32, 32, 1\)"),
        (jnp.zeros((2, 28, 28, 1), jnp.int32), "floating-point input.*int32"),
    ],
)
def test_bad_input_names_the_expected_shape(key, x, match):
    model = models.create("cnn")
    with pytest.raises(ValueError, match=match):
        model.init(key, x)
    variables = model.init(key, jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(ValueError, match=match):
        jax.jit(model.apply)(variables, x)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"input_shape": (4,)}, "input_shape must be"),
        ({"input_shape": (8, 8, 1), "pool": "median"}, "unknown pool 'median'"),
        ({"input_shape": (8, 8, 1), "activation": "swish-ish"}, "unknown activation"),
        ({"input_shape": (8, 8, 1), "dropout": 1.0}, "dropout must be in"),
        ({"input_shape": (8, 8, 1), "features": ()}, "features must be"),
    ],
)
def test_convnet_rejects_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        models.create("convnet", **options)


def test_seed_cnn_needs_an_image_shape():
    with pytest.raises(ValueError, match=r"cnn input_shape must be \(height, width, channels\)"):
        models.create("cnn", input_shape=(24, 1))


def test_registry_errors_list_the_valid_choices():
    with pytest.raises(
        ValueError,
        match=r"unknown model 'resnet' \(did you mean resnet18, resnet20, resnet34, resnet50\?\); "
        "choose from: autoencoder, bigru, bilstm",
    ):
        models.create("resnet")
    with pytest.raises(ValueError, match=r"'lstn' \(did you mean lstm, bilstm\?\)"):
        models.create("lstn")
    with pytest.raises(ValueError, match="has no option widht; valid options: num_classes"):
        models.create("cnn", widht=3)
