"""The temporal convolutional networks: shapes, causality, the receptive field, and one residual
block against the paper's PyTorch block (padding and chomp) with the same weights.

Inputs and most parameters are NumPy draws (parameters shaped by `jax.eval_shape` of `init`):
random biases keep relus from dying at the sequence start, and nothing is compiled to make them.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import models
from zoo.models.tcn import TemporalBlock, TemporalConvNet, receptive_field


def normal(shape, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def random_params(module, x, seed=0):
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)["params"]
    leaves, treedef = jax.tree.flatten(shapes)
    draws = [normal(leaf.shape, seed + i, scale=0.5) for i, leaf in enumerate(leaves)]
    return jax.tree.unflatten(treedef, draws)


def test_defaults_fit_digits_seq_and_the_series_windows(key):
    classifier, forecaster = models.create("tcn"), models.create("tcn_forecast")
    assert (models.task("tcn"), models.task("tcn_forecast")) == ("classify", "regress")
    x = normal((3, 28, 28))
    variables = jax.eval_shape(classifier.init, key, x)
    chex.assert_shape(jax.eval_shape(classifier.apply, variables, x), (3, 10))
    chex.assert_shape(jax.eval_shape(classifier.apply, variables, x[0]), (10,))  # unbatched
    params = variables["params"]["TemporalConvNet_0"]
    assert params["TemporalBlock_0"]["conv1"]["kernel"].shape == (3, 28, 32)
    assert params["TemporalBlock_0"]["downsample"]["kernel"].shape == (1, 28, 32)
    assert "downsample" not in params["TemporalBlock_1"]  # 32 -> 32: the identity shortcut
    window = normal((2, 24, 1))
    variables = jax.eval_shape(forecaster.init, key, window)
    chex.assert_shape(jax.eval_shape(forecaster.apply, variables, window), (2, 1))


def test_output_shapes_for_other_sizes_and_any_length(key):
    model = models.create("tcn", input_shape=(None, 3), channels=(4, 5), num_classes=6)
    variables = {"params": random_params(model, normal((1, 7, 3)))}
    apply = jax.jit(model.apply)
    for steps in (1, 20):
        y = apply(variables, normal((2, steps, 3)))
        chex.assert_shape(y, (2, 6))
        chex.assert_tree_all_finite(y)
    forecaster = models.create("tcn_forecast", input_shape=(10, 2), horizon=3, channels=(4,))
    x = normal((2, 5, 10, 2))  # two leading batch axes
    variables = jax.eval_shape(forecaster.init, key, x)
    chex.assert_shape(jax.eval_shape(forecaster.apply, variables, x), (2, 5, 3))


def test_the_untrained_forecaster_is_the_naive_forecast(key):
    model = models.create("tcn_forecast", input_shape=(6, 2), horizon=3, channels=(4, 4))
    window = normal((5, 6, 2))
    y = jax.jit(lambda window: model.apply(model.init(key, window), window))(window)
    np.testing.assert_array_equal(y, np.broadcast_to(window[:, -1, :1], (5, 3)))


def test_the_classifier_reads_the_last_step_of_the_features():
    model = models.create("tcn", input_shape=(None, 3), channels=(4, 5), num_classes=6)
    x = normal((2, 9, 3))
    params = random_params(model, x)
    stack = TemporalConvNet(channels=(4, 5), kernel_size=3)
    features = jax.jit(stack.apply)({"params": params["TemporalConvNet_0"]}, x)  # (B, T, 5)
    head = params["Dense_0"]
    apply = jax.jit(model.apply)
    for steps in (1, 4, 9):  # a prefix's logits are the head on its last step's features
        expected = features[:, steps - 1] @ head["kernel"] + head["bias"][None]
        np.testing.assert_allclose(apply({"params": params}, x[:, :steps]), expected, 1e-5)


def test_features_are_causal():
    stack = TemporalConvNet(channels=(4, 5), kernel_size=3)
    x = normal((4, 9, 3))
    variables = {"params": random_params(stack, x)}
    one = lambda x: stack.apply(variables, x[None])[0]  # noqa: E731 - (T, F) -> (T, C)
    jacobians = jax.jit(jax.vmap(jax.jacfwd(one)))(x)  # (B, T, C, T, F)
    influence = jnp.abs(jacobians).sum(axis=(0, 2, 4))  # (output step, input step)
    later = np.triu(np.ones((9, 9), bool), k=1)  # input step after the output step
    np.testing.assert_array_equal(influence[later], 0.0)
    assert np.all(influence[~later] > 0)  # the receptive field (13) spans all 9 steps
    # The same in streaming form: a prefix's features are the whole sequence's first steps.
    apply = jax.jit(stack.apply)
    for steps in (1, 5, 8):
        np.testing.assert_allclose(
            apply(variables, x[:, :steps]), apply(variables, x)[:, :steps], rtol=1e-5, atol=1e-6
        )


def test_receptive_field_formula_by_counting():
    assert [receptive_field(3, 3), receptive_field(2, 4), receptive_field(5, 1)] == [29, 31, 9]


@pytest.mark.parametrize("kernel_size, channels", [(2, (6, 6, 6)), (3, (6, 7))])
def test_only_inputs_inside_the_receptive_field_reach_the_last_step(kernel_size, channels):
    field = receptive_field(kernel_size, len(channels))
    steps = field + 3
    stack = TemporalConvNet(channels=channels, kernel_size=kernel_size)
    x = normal((4, steps, 2))
    variables = {"params": random_params(stack, x)}
    grad = jax.jit(jax.grad(lambda x: jnp.sum(stack.apply(variables, x)[:, -1])))(x)  # (B, T, F)
    influence = jnp.abs(grad).sum(axis=(0, 2))  # (T,)
    first = steps - field  # the earliest input step the last output sees
    np.testing.assert_array_equal(influence[:first], 0.0)  # just outside the field, and before
    assert influence[first] > 0  # just inside
    assert np.all(influence[first:] > 0)


def torch_temporal_block(torch, n_inputs, n_outputs, kernel_size, dilation):
    """The paper's block (locuslab/TCN `TemporalBlock`, without weight norm and dropout):
    both-sides padding of `(k - 1) * d`, then `Chomp1d` cuts the padded end off again."""
    padding = (kernel_size - 1) * dilation

    def conv(n_in):
        return torch.nn.Conv1d(n_in, n_outputs, kernel_size, padding=padding, dilation=dilation)

    class Chomp1d(torch.nn.Module):
        def forward(self, x):
            return x[:, :, :-padding].contiguous()

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = conv(n_inputs), conv(n_outputs)
            self.net = torch.nn.Sequential(
                self.conv1, Chomp1d(), torch.nn.ReLU(), self.conv2, Chomp1d(), torch.nn.ReLU()
            )
            self.downsample = (
                torch.nn.Conv1d(n_inputs, n_outputs, 1) if n_inputs != n_outputs else None
            )

        def forward(self, x):
            res = x if self.downsample is None else self.downsample(x)
            return torch.relu(self.net(x) + res)

    return Block()


@pytest.mark.parametrize("n_inputs, n_outputs, kernel_size, dilation", [(3, 5, 3, 2), (4, 4, 2, 4)])
def test_block_matches_the_papers_pytorch_block(n_inputs, n_outputs, kernel_size, dilation):
    torch = pytest.importorskip("torch")
    block = TemporalBlock(n_outputs, kernel_size, dilation)
    x = normal((2, 7, n_inputs))  # (B, T, C)
    params = random_params(block, x, seed=1)
    reference = torch_temporal_block(torch, n_inputs, n_outputs, kernel_size, dilation)
    with torch.no_grad():
        for name, layer in params.items():
            module = getattr(reference, name)
            # Flax (width, in, out) -> PyTorch (out, in, width); both cross-correlate.
            module.weight.copy_(torch.from_numpy(layer["kernel"].transpose(2, 1, 0).copy()))
            module.bias.copy_(torch.from_numpy(layer["bias"]))
        expected = reference(torch.from_numpy(x.transpose(0, 2, 1))).numpy().transpose(0, 2, 1)
    assert set(params) == (
        {"conv1", "conv2"} | ({"downsample"} if n_inputs != n_outputs else set())
    )
    y = jax.jit(block.apply)({"params": params}, x)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_dropout_is_active_in_training_only():
    options = {"input_shape": (6, 3), "channels": (8, 8)}
    model, plain = models.create("tcn", **options, dropout=0.5), models.create("tcn", **options)
    x = normal((4, 6, 3))
    variables = {"params": random_params(plain, x)}  # dropout has no parameters
    apply = jax.jit(model.apply, static_argnames="train")
    reference = jax.jit(plain.apply)(variables, x)
    np.testing.assert_array_equal(apply(variables, x), reference)
    dropped = [
        apply(variables, x, train=True, rngs={"dropout": jax.random.key(seed)}) for seed in (1, 2)
    ]
    assert not np.allclose(dropped[0], reference)
    assert not np.allclose(dropped[0], dropped[1])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"input_shape": (8, 8, 1)}, r"tcn input_shape must be \(steps, features\)"),
        ({"channels": ()}, "channels must be positive"),
        ({"channels": (4, 0)}, "channels must be positive"),
        ({"kernel_size": 0}, "kernel_size must be positive"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_invalid_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        models.create("tcn", **options)
    with pytest.raises(ValueError, match=message.replace("tcn", "tcn_forecast")):
        models.create("tcn_forecast", **options)


def test_inputs_of_another_shape_or_dtype_are_refused(key):
    model = models.create("tcn")
    variables = jax.eval_shape(model.init, key, normal((1, 28, 28)))
    with pytest.raises(ValueError, match=r"tcn expects input of shape \(batch, 28, 28\)"):
        jax.eval_shape(model.apply, variables, normal((2, 28, 27)))
    with pytest.raises(ValueError, match="tcn expects floating-point input"):
        jax.eval_shape(model.apply, variables, np.ones((2, 28, 28), np.int32))
