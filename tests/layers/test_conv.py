import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from zoo.layers.conv import ResidualBlock, activation, avg_pool, max_pool


def numpy_pool(x: np.ndarray, window: tuple[int, ...], reduce) -> np.ndarray:
    """Loop reference: non-overlapping windows, remainder dropped."""
    spatial = x.shape[1:-1]
    out_shape = tuple(s // w for s, w in zip(spatial, window, strict=True))
    out = np.zeros((x.shape[0], *out_shape, x.shape[-1]), x.dtype)
    for index in np.ndindex(*out_shape):
        region = tuple(slice(i * w, (i + 1) * w) for i, w in zip(index, window, strict=True))
        patch = x[(slice(None), *region, slice(None))]
        out[(slice(None), *index, slice(None))] = reduce(
            patch, axis=tuple(range(1, 1 + len(window)))
        )
    return out


@pytest.mark.parametrize(
    "shape, window",
    [((2, 6, 4), (2,)), ((2, 7, 3), (3,)), ((3, 4, 6, 5), (2, 2)), ((2, 11, 9, 3), (2, 3))],
)
@pytest.mark.parametrize("pool, reduce", [(max_pool, np.max), (avg_pool, np.mean)])
def test_pool_matches_numpy_loop(shape, window, pool, reduce):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(pool(x, window), numpy_pool(x, window, reduce), rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 26, 26, 3), (2, 11, 11, 4), (3, 9, 2)])
def test_pool_matches_flax_reduce_window(shape):
    x = jax.random.normal(jax.random.key(1), shape)
    window = (2,) * (len(shape) - 2)
    np.testing.assert_allclose(max_pool(x, 2), nn.max_pool(x, window, strides=window), rtol=1e-6)
    np.testing.assert_allclose(avg_pool(x, 2), nn.avg_pool(x, window, strides=window), rtol=1e-6)


def test_pool_gradients_match_finite_differences():
    x = jax.random.normal(jax.random.key(2), (2, 5, 4, 3))  # distinct values: no max ties
    check_grads(lambda v: max_pool(v, 2), (x,), order=1, modes=["rev"])
    check_grads(lambda v: avg_pool(v, 2), (x,), order=1, modes=["rev"])


def test_pool_rejects_window_larger_than_input():
    with pytest.raises(ValueError, match="larger than the spatial shape"):
        max_pool(jnp.zeros((1, 3, 3, 1)), 4)


def test_unknown_activation_lists_choices():
    with pytest.raises(ValueError, match="relu"):
        activation("swish-ish")


@pytest.mark.parametrize("in_channels, features", [(4, 4), (3, 5)])
def test_residual_block_adds_shortcut(key, in_channels, features):
    block = ResidualBlock(features, (3, 3))
    x = jax.random.normal(key, (2, 6, 7, in_channels))
    variables = block.init(key, x, train=False)
    y = block.apply(variables, x, train=False)
    assert y.shape == (2, 6, 7, features)
    assert ("projection" in variables["params"]) == (in_channels != features)
    # With the second convolution zeroed, the block reduces to relu(shortcut(x)).
    zeroed = jax.tree.map(lambda p: p, variables)
    zeroed["params"]["Conv_1"] = jax.tree.map(jnp.zeros_like, zeroed["params"]["Conv_1"])
    shortcut = x
    if in_channels != features:
        kernel = variables["params"]["projection"]["kernel"]  # (1, 1, in, out)
        shortcut = jnp.einsum("bhwi,io->bhwo", x, kernel[0, 0])
    np.testing.assert_allclose(
        block.apply(zeroed, x, train=False), jax.nn.relu(shortcut), atol=1e-5
    )
