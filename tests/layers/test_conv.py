import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from zoo import runtime
from zoo.layers import conv as conv_lib
from zoo.layers.conv import Conv, ResidualBlock, activation, avg_pool, conv, max_pool


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


@pytest.fixture(params=["any-mode", "hand-written"])
def pool_gradient(request, monkeypatch):
    """max_pool's two derivatives: a custom_jvp (every transformation) and, in zoo's train steps
    on CPU, the hand-written reverse-mode gradient."""
    if request.param == "hand-written":
        monkeypatch.setattr(runtime, "using_hand_written_gradients", lambda: True)
    return request.param


def test_pool_gradients_match_finite_differences(pool_gradient):
    x = jax.random.normal(jax.random.key(2), (2, 5, 4, 3))  # distinct values: no max ties
    modes = ["rev"] if pool_gradient == "hand-written" else ["fwd", "rev"]
    with jax.enable_x64(True):
        x = np.asarray(x, np.float64)
        check_grads(lambda v: max_pool(v, 2), (x,), order=2, modes=modes)
        check_grads(lambda v: avg_pool(v, 2), (x,), order=2, modes=["fwd", "rev"])


def test_max_pool_gradient_goes_to_the_window_maximum_split_between_ties(pool_gradient):
    """JAX's convention for max: tied maxima share the gradient. (Images have flat backgrounds,
    so ties are common; giving each tie the whole gradient changed training results.)"""
    x = np.array([[1, 4, 2, 2, 9], [3, 0, 2, 2, 9], [7, 7, 1, 5, 9]], np.float32)[None, ..., None]
    g = np.array([[10.0, 20.0]], np.float32)[None, ..., None]  # output (1, 1, 2, 1)
    _, pullback = jax.vjp(lambda v: max_pool(v, 2), x)
    expected = np.zeros_like(x)
    expected[0, 0, 1, 0] = 10.0  # the 4 of the first window
    expected[0, :2, 2:4, 0] = 5.0  # four tied 2s; row 2 and column 4 are the dropped remainder
    np.testing.assert_array_equal(pullback(g)[0], expected)


@pytest.mark.parametrize(
    "shape, window",
    [
        ((2, 7, 3), (2,)),
        ((2, 11, 9, 3), (2, 3)),
        ((2, 5, 4, 6, 3), (2, 2, 3)),
        ((1, 4, 4, 2), (4, 1)),
    ],
)
def test_max_pool_gradient_is_that_of_jnp_max_over_the_windows(pool_gradient, shape, window):
    # Rounded values make ties common, as on images' flat backgrounds.
    x = jnp.round(jax.random.normal(jax.random.key(3), shape))
    out = [s // w for s, w in zip(shape[1:-1], window, strict=True)]

    def reference(v):  # crop the remainder, split each axis into (out, window), max over windows
        v = v[(slice(None), *(slice(0, o * w) for o, w in zip(out, window, strict=True)))]
        split = [a for o, w in zip(out, window, strict=True) for a in (o, w)]
        v = v.reshape(shape[0], *split, shape[-1])
        return jnp.max(v, axis=tuple(range(2, 2 + 2 * len(window), 2)))

    g = jax.random.normal(jax.random.key(4), (shape[0], *out, shape[-1]))
    expected = jax.vjp(reference, x)[1](g)[0]
    np.testing.assert_allclose(jax.vjp(lambda v: max_pool(v, window), x)[1](g)[0], expected)


def numpy_strided_pool(x, window, strides, pads, reduce):
    """Loop reference with explicit padding; padded cells never count."""
    padded = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=np.nan)
    out_shape = tuple(
        (s - w) // st + 1 for s, w, st in zip(padded.shape[1:-1], window, strides, strict=True)
    )
    out = np.zeros((x.shape[0], *out_shape, x.shape[-1]), np.float64)
    for index in np.ndindex(*out_shape):
        region = tuple(
            slice(i * st, i * st + w) for i, w, st in zip(index, window, strides, strict=True)
        )
        patch = padded[(slice(None), *region, slice(None))]
        out[(slice(None), *index, slice(None))] = reduce(patch, axis=tuple(range(1, x.ndim - 1)))
    return out


@pytest.mark.parametrize(
    "shape, window, strides, padding, pads",
    [
        ((2, 9, 8, 3), (3, 3), (2, 2), [(1, 1), (1, 1)], [(1, 1), (1, 1)]),  # ResNet's stem pool
        ((2, 9, 8, 3), (3, 3), (2, 2), "SAME", [(1, 1), (0, 1)]),
        ((2, 7, 3), (3,), (1,), "VALID", [(0, 0)]),  # overlapping windows
        ((2, 10, 3), (2,), (3,), "VALID", [(0, 0)]),  # gaps between windows
    ],
)
@pytest.mark.parametrize("pool, reduce", [(max_pool, np.nanmax), (avg_pool, np.nanmean)])
def test_strided_padded_pool_matches_numpy_loop(
    shape, window, strides, padding, pads, pool, reduce
):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    expected = numpy_strided_pool(x, window, strides, pads, reduce)
    np.testing.assert_allclose(pool(x, window, strides, padding), expected, rtol=1e-6)


def test_strided_pool_supports_forward_and_second_order_derivatives():
    x = np.asarray(jax.random.normal(jax.random.key(5), (2, 7, 6, 2)), np.float64)
    with jax.enable_x64(True):
        for pool in (max_pool, avg_pool):
            f = lambda v, pool=pool: pool(v, 3, 2, "SAME")  # noqa: E731
            check_grads(f, (x,), order=2, modes=["fwd", "rev"])
            jax.jit(jax.hessian(lambda v, f=f: f(v).sum()))(x[:1, :4, :4, :1])


def test_global_pools_reduce_every_spatial_axis():
    x = np.random.default_rng(1).normal(size=(2, 5, 4, 3, 6)).astype(np.float32)
    np.testing.assert_allclose(conv_lib.global_avg_pool(x), x.mean(axis=(1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(conv_lib.global_max_pool(x), x.max(axis=(1, 2, 3)))


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


def numpy_conv(x: np.ndarray, kernel: np.ndarray, padding: str) -> np.ndarray:
    """Loop reference: correlation of `(B, *spatial, C)` with `(*window, C, F)`, stride 1."""
    window = kernel.shape[:-2]
    if padding == "SAME":
        pads = [(0, 0)] + [((w - 1) // 2, w // 2) for w in window] + [(0, 0)]
        x = np.pad(x, pads)
    out_shape = tuple(s - w + 1 for s, w in zip(x.shape[1:-1], window, strict=True))
    out = np.zeros((x.shape[0], *out_shape, kernel.shape[-1]), np.float64)
    for index in np.ndindex(*out_shape):
        region = tuple(slice(i, i + w) for i, w in zip(index, window, strict=True))
        patch = x[(slice(None), *region, slice(None))]  # (B, *window, C)
        out[(slice(None), *index, slice(None))] = np.tensordot(patch, kernel, len(window) + 1)
    return out


@pytest.fixture(params=["patches", "lax", "cpu-options"])
def conv_path(request, monkeypatch):
    """Every lowering of `conv` on any backend: CPU under a plain jax.jit (matmul over patches),
    XLA's convolution (other backends), CPU traced by `zoo.runtime.jit` (XLA's convolution for a
    wide kernel, shifted slices for a narrow one)."""
    monkeypatch.setattr(conv_lib, "patch_convolution", lambda: request.param != "lax")
    tuned = request.param == "cpu-options"
    monkeypatch.setattr(runtime, "tracing_with_cpu_options", lambda: tuned)
    return request.param


CONV_CASES = [
    ((2, 9, 8, 3), (3, 3), "VALID"),
    ((2, 9, 8, 3), (3, 2), "SAME"),
    ((2, 10, 5), (3,), "VALID"),
    ((2, 10, 5), (4,), "SAME"),
    ((2, 6, 5, 4), (1, 1), "SAME"),
    # Narrow kernels (prod(window) * C <= 6 features), as in a first layer: shifted slices.
    ((2, 9, 8, 1), (2, 3), "VALID"),
    ((2, 10, 2), (3,), "SAME"),
]


@pytest.mark.parametrize("shape, window, padding", CONV_CASES)
def test_conv_matches_numpy_loop(conv_path, shape, window, padding):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    kernel = rng.normal(size=(*window, shape[-1], 6)).astype(np.float32)
    expected = numpy_conv(x, kernel, padding)
    np.testing.assert_allclose(conv(x, kernel, padding), expected, rtol=1e-5, atol=1e-5)
    # The value computed when differentiating (the patch matmul on CPU) is the same.
    value, _ = jax.vjp(lambda a, k: conv(a, k, padding), x, kernel)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)
    # Leading batch axes of any rank, as in nn.Conv.
    stacked = conv(np.stack([x, 2 * x]), kernel, padding)
    np.testing.assert_allclose(stacked[1], 2 * expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape, window, padding", CONV_CASES)
def test_conv_module_is_nn_conv_with_the_same_variables(conv_path, shape, window, padding):
    x = jax.random.normal(jax.random.key(2), shape)
    ours, flax_conv = (layer(6, window, padding=padding) for layer in (Conv, nn.Conv))
    variables = ours.init(jax.random.key(3), x)
    # The same names, shapes and initial values: either module's variables load into the other.
    flax_variables = flax_conv.init(jax.random.key(3), x)
    assert jax.tree.structure(variables) == jax.tree.structure(flax_variables)
    jax.tree.map(np.testing.assert_array_equal, variables, flax_variables)
    np.testing.assert_allclose(
        ours.apply(variables, x), flax_conv.apply(variables, x), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "x_shape, kernel_shape",
    [
        ((2, 6, 5, 3), (3, 2, 3, 4)),  # patches wider than the output: kept from the forward pass
        ((2, 6, 5, 1), (3, 3, 1, 12)),  # narrower (a first layer): rebuilt, transposed
        ((2, 7, 2), (2, 2, 8)),  # narrow, 1-D, two channels
        ((2, 2, 5, 4, 2), (2, 2, 2, 8)),  # narrow, an extra leading batch axis
    ],
)
def test_conv_gradients_match_finite_differences(conv_path, x_shape, kernel_shape):
    rng = np.random.default_rng(1)
    x, kernel = rng.normal(size=x_shape), rng.normal(size=kernel_shape)
    # XLA's convolution is every model's outside zoo's train steps: forward mode and second
    # order too; the hand-written gradients are reverse mode only.
    order, modes = (2, ["fwd", "rev"]) if conv_path == "lax" else (1, ["rev"])
    with jax.enable_x64():
        check_grads(lambda a, k: conv(a, k, "VALID"), (x, kernel), order=order, modes=modes)
        check_grads(lambda a, k: conv(a, k, "SAME"), (x, kernel), order=order, modes=modes)


def numpy_general_conv(x, kernel, pads, strides, dilation, groups):
    """Loop reference: grouped, dilated, strided correlation of `(B, *spatial, C)` with
    `(*window, C // groups, F)` after explicit zero padding."""
    window = kernel.shape[:-2]
    x = np.pad(x, [(0, 0), *pads, (0, 0)])
    effective = [(w - 1) * d + 1 for w, d in zip(window, dilation, strict=True)]
    out_shape = tuple(
        (s - e) // st + 1 for s, e, st in zip(x.shape[1:-1], effective, strides, strict=True)
    )
    per_group_in, per_group_out = kernel.shape[-2], kernel.shape[-1] // groups
    out = np.zeros((x.shape[0], *out_shape, kernel.shape[-1]), np.float64)
    for index in np.ndindex(*out_shape):
        region = tuple(
            slice(i * st, i * st + e, d)
            for i, st, e, d in zip(index, strides, effective, dilation, strict=True)
        )
        patch = x[(slice(None), *region, slice(None))]  # (B, *window, C)
        for g in range(groups):
            inputs = patch[..., g * per_group_in : (g + 1) * per_group_in]
            weights = kernel[..., g * per_group_out : (g + 1) * per_group_out]
            out[(slice(None), *index, slice(g * per_group_out, (g + 1) * per_group_out))] = (
                np.tensordot(inputs, weights, len(window) + 1)
            )
    return out


GENERAL_CONV_CASES = [
    # x shape, kernel window, padding, explicit pads, strides, dilation, groups, features
    ((2, 9, 8, 3), (3, 3), "SAME", [(1, 1), (0, 1)], (2, 2), (1, 1), 1, 4),
    ((2, 9, 8, 3), (7, 7), 3, [(3, 3), (3, 3)], (2, 2), (1, 1), 1, 4),  # ResNet's stem
    ((2, 9, 8, 4), (3, 3), [(1, 1), (0, 2)], [(1, 1), (0, 2)], (2, 1), (1, 1), 1, 5),
    ((2, 9, 8, 4), (3, 3), "SAME", [(2, 2), (2, 2)], (1, 1), (2, 2), 1, 4),
    ((2, 9, 8, 4), (3, 3), "SAME", [(1, 1), (1, 1)], (1, 1), (1, 1), 4, 4),  # depthwise
    ((2, 9, 8, 4), (3, 3), "SAME", [(1, 1), (0, 1)], (2, 2), (1, 1), 4, 4),  # MobileNet's stride 2
    ((2, 11, 3), (3,), "CAUSAL", [(4, 0)], (1,), (2,), 3, 3),  # depthwise, dilated, causal
    ((2, 9, 8, 4), (3, 3), "SAME", [(1, 1), (0, 1)], (2, 2), (1, 1), 4, 8),  # multiplier 2
    ((2, 8, 7, 6), (3, 3), "VALID", [(0, 0), (0, 0)], (1, 1), (1, 1), 2, 4),  # grouped
    ((2, 11, 4), (3,), "CAUSAL", [(6, 0)], (1,), (3,), 1, 5),  # a TCN's dilated causal conv
]


@pytest.mark.parametrize(
    "shape, window, padding, pads, strides, dilation, groups, features", GENERAL_CONV_CASES
)
def test_strided_dilated_grouped_conv_matches_numpy_loop(
    shape, window, padding, pads, strides, dilation, groups, features
):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    kernel = rng.normal(size=(*window, shape[-1] // groups, features)).astype(np.float32)
    expected = numpy_general_conv(x, kernel, pads, strides, dilation, groups)
    got = conv(x, kernel, padding, strides, dilation, groups)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Inside zoo's train steps the general convolution is XLA's as well.
    with runtime.hand_written_gradients():
        value, _ = jax.vjp(lambda a, k: conv(a, k, padding, strides, dilation, groups), x, kernel)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)
    module = Conv(features, window, strides, padding, dilation, groups)
    variables = {"params": {"kernel": kernel, "bias": np.zeros(features, np.float32)}}
    flax_conv = nn.Conv(
        features,
        window,
        strides,
        padding,
        kernel_dilation=dilation,
        feature_group_count=groups,
    )
    np.testing.assert_allclose(
        module.apply(variables, x), flax_conv.apply(variables, x), rtol=1e-5, atol=1e-5
    )
    assert jax.tree.map(np.shape, flax_conv.init(jax.random.key(0), x)) == jax.tree.map(
        np.shape, variables
    )
    with jax.enable_x64():
        x64, k64 = x.astype(np.float64), kernel.astype(np.float64)
        check_grads(
            lambda a, k: conv(a, k, padding, strides, dilation, groups),
            (x64[:1], k64),
            order=2,
            modes=["fwd", "rev"],
        )


def test_causal_conv_never_sees_the_future():
    x = jax.random.normal(jax.random.key(0), (1, 9, 2))
    kernel = jax.random.normal(jax.random.key(1), (3, 2, 3))
    jacobian = jax.jacfwd(lambda v: conv(v, kernel, "CAUSAL", dilation=2))(x)[0, :, :, 0]
    influence = np.abs(np.asarray(jacobian)).sum(axis=(1, 3))  # (output step, input step)
    assert np.all(np.triu(influence, k=1) == 0)  # no output step depends on a later input
    assert np.all(np.diag(influence) > 0)


def test_conv_rejects_bad_shapes():
    kernel = np.zeros((3, 3, 2, 4), np.float32)
    with pytest.raises(ValueError, match=r"does not fit kernel \(3, 3, 2, 4\)"):
        conv(np.zeros((1, 8, 8, 3), np.float32), kernel)
    with pytest.raises(ValueError, match="larger than the padded spatial shape"):
        conv(np.zeros((1, 2, 8, 2), np.float32), kernel)
    with pytest.raises(ValueError, match="padding must be 'VALID', 'SAME', 'CAUSAL'"):
        conv(np.zeros((1, 8, 8, 2), np.float32), kernel, "FULL")
    with pytest.raises(ValueError, match="'CAUSAL' is for 1-D"):
        conv(np.zeros((1, 8, 8, 2), np.float32), kernel, "CAUSAL")
    with pytest.raises(ValueError, match=r"one non-negative int or \(low, high\) pair per"):
        conv(np.zeros((1, 8, 8, 2), np.float32), kernel, [(1, 1)])
    with pytest.raises(ValueError, match="in 2 groups"):
        conv(np.zeros((1, 8, 8, 3), np.float32), kernel, groups=2)
    with pytest.raises(ValueError, match="strides .* must be positive"):
        conv(np.zeros((1, 8, 8, 2), np.float32), kernel, strides=0)


def test_a_conv_stack_trains_alike_under_runtime_jit_and_jax_jit():
    # Real compile options and tracing flag: a narrow first layer, a wide second one.
    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = max_pool(jax.nn.relu(Conv(12, (3, 3))(x)), 2)
            return jnp.mean(jax.nn.relu(Conv(16, (3, 3), padding="SAME")(x)) ** 2)

    x = jax.random.normal(jax.random.key(0), (4, 12, 12, 1))
    params = Stack().init(jax.random.key(1), x)

    def loss_and_grads(p, x):
        return jax.value_and_grad(Stack().apply, argnums=(0, 1))(p, x)

    tuned, plain = runtime.jit(loss_and_grads)(params, x), jax.jit(loss_and_grads)(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), tuned, plain)
