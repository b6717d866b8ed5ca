"""The ConvLSTM cell against a NumPy loop of the equations, the scanned layer against a Python
loop of the cell, masking, derivatives, and parity with Keras 3's ConvLSTM2D."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from zoo import runtime
from zoo.layers.convlstm import ConvLSTM, convlstm_cell, from_keras_convlstm, initial_state
from zoo.layers.recurrent import LSTMState

B, T, H, W, C, F = 2, 3, 5, 4, 2, 3  # distinct sizes so a transposed axis cannot pass
X = np.random.default_rng(0).normal(size=(B, T, H, W, C)).astype(np.float32)
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def numpy_conv(x, kernel, padding):
    """Cross-correlation of `(B, H, W, C)` with `(kh, kw, C, F)`, one output pixel at a time;
    'SAME' pads `(k - 1) // 2` before and `k // 2` after, as Keras and `lax`."""
    kh, kw = kernel.shape[:2]
    if padding == "SAME":
        x = np.pad(x, [(0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)])
    out = np.zeros((x.shape[0], x.shape[1] - kh + 1, x.shape[2] - kw + 1, kernel.shape[-1]))
    for row in range(out.shape[1]):
        for col in range(out.shape[2]):
            window = x[:, row : row + kh, col : col + kw, :]  # (B, kh, kw, C)
            out[:, row, col] = np.einsum("bijc,ijcf->bf", window, kernel)
    return out


def numpy_convlstm_step(params, h, c, x, padding):
    """Written from the equations, gate by gate, in float64."""
    kernel, recurrent, bias = (
        np.asarray(params[k], np.float64) for k in ("kernel", "recurrent_kernel", "bias")
    )
    n = recurrent.shape[2]

    def pre(k):
        gate = slice(k * n, (k + 1) * n)
        return (
            numpy_conv(x, kernel[..., gate], padding)
            + numpy_conv(h, recurrent[..., gate], "SAME")
            + bias[gate]
        )

    i, f, g, o = sigmoid(pre(0)), sigmoid(pre(1)), np.tanh(pre(2)), sigmoid(pre(3))
    c = f * c + i * g
    return o * np.tanh(c), c


def random_params(kernel_size=(3, 3), channels=C, filters=F, seed=1):
    rng = np.random.default_rng(seed)
    params = {
        "kernel": rng.normal(size=(*kernel_size, channels, 4 * filters)) * 0.5,
        "recurrent_kernel": rng.normal(size=(*kernel_size, filters, 4 * filters)) * 0.5,
        "bias": rng.normal(size=(4 * filters,)),
    }
    return {name: value.astype(np.float32) for name, value in params.items()}


def out_size(padding, kernel_size):
    if padding == "SAME":
        return H, W
    return H - kernel_size[0] + 1, W - kernel_size[1] + 1


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("kernel_size", [(3, 3), (2, 3)])
def test_cell_matches_numpy(padding, kernel_size):
    params = random_params(kernel_size)
    rows, cols = out_size(padding, kernel_size)
    rng = np.random.default_rng(2)
    h, c = (rng.normal(size=(B, rows, cols, F)) for _ in range(2))
    carry = LSTMState(jnp.asarray(h, jnp.float32), jnp.asarray(c, jnp.float32))
    (new_h, new_c), y = convlstm_cell(params, carry, X[:, 0], padding=padding)
    expected_h, expected_c = numpy_convlstm_step(params, h, c, X[:, 0], padding)
    np.testing.assert_allclose(new_h, expected_h, **TOLERANCE)
    np.testing.assert_allclose(new_c, expected_c, **TOLERANCE)
    np.testing.assert_array_equal(y, new_h)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_scanned_layer_matches_python_loop_of_cell(padding):
    layer = ConvLSTM(F, (3, 2), padding, return_sequences=True)
    params = random_params((3, 2))
    outputs, state = jax.jit(layer.apply)({"params": params}, X)
    carry = initial_state(B, out_size(padding, (3, 2)), F)
    expected = []
    for t in range(T):
        carry, y = convlstm_cell(params, carry, X[:, t], padding=padding)
        expected.append(y)
    np.testing.assert_allclose(outputs, np.stack(expected, axis=1), **TOLERANCE)
    np.testing.assert_allclose(state.h, carry.h, **TOLERANCE)
    np.testing.assert_allclose(state.c, carry.c, **TOLERANCE)
    last, _ = ConvLSTM(F, (3, 2), padding).apply({"params": params}, X)
    np.testing.assert_allclose(last, carry.h, **TOLERANCE)


def test_parameters_have_keras_shapes_and_the_forget_bias_starts_at_one():
    variables = ConvLSTM(F, (3, 2)).init(jax.random.key(0), X)
    params = variables["params"]
    shapes = {name: value.shape for name, value in params.items()}
    assert shapes == {
        "kernel": (3, 2, C, 4 * F),
        "recurrent_kernel": (3, 2, F, 4 * F),
        "bias": (4 * F,),
    }
    np.testing.assert_array_equal(params["bias"], [0] * F + [1] * F + [0] * 2 * F)


def test_padded_batch_matches_each_sequence_alone():
    layer = ConvLSTM(F, return_sequences=True)
    params = random_params()
    lengths = np.array([T, 1])
    outputs, state = layer.apply({"params": params}, X, lengths)
    for b, length in enumerate(lengths):
        alone, alone_state = layer.apply({"params": params}, X[b : b + 1, :length])
        np.testing.assert_allclose(outputs[b, :length], alone[0], **TOLERANCE)
        np.testing.assert_allclose(state.h[b], alone_state.h[0], **TOLERANCE)
        np.testing.assert_allclose(state.c[b], alone_state.c[0], **TOLERANCE)
        np.testing.assert_array_equal(outputs[b, length:], 0.0)  # zeros past the end
    last, _ = ConvLSTM(F).apply({"params": params}, X, lengths)
    np.testing.assert_allclose(last, state.h, **TOLERANCE)  # the last valid step's h


def test_zero_length_keeps_the_initial_state():
    _, state = ConvLSTM(F).apply({"params": random_params()}, X, np.array([0, T]))
    np.testing.assert_array_equal(state.h[0], 0.0)
    np.testing.assert_array_equal(state.c[0], 0.0)


def test_bfloat16_computes_in_bfloat16_with_float32_params():
    layer = ConvLSTM(F, dtype=jnp.bfloat16)
    variables = layer.init(jax.random.key(0), X)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    h, state = layer.apply(variables, X)
    assert h.dtype == state.c.dtype == jnp.bfloat16
    full, _ = ConvLSTM(F).apply(variables, X)
    np.testing.assert_allclose(np.asarray(h, np.float32), full, atol=0.05)


@pytest.mark.parametrize("hand_written", [False, True])
def test_derivatives_match_finite_differences(hand_written):
    """Forward and reverse mode, second order included (the layer is plain JAX); under
    `hand_written_gradients` the input convolution takes zoo's CPU gradient."""
    layer = ConvLSTM(2, (2, 3), return_sequences=True)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: np.asarray(a, np.float64), random_params((2, 3), C, 2))
        x = np.asarray(X, np.float64)

        def apply(params, x):
            if hand_written:
                with runtime.hand_written_gradients():
                    return layer.apply({"params": params}, x, np.array([T, 2]))[0]
            return layer.apply({"params": params}, x, np.array([T, 2]))[0]

        if hand_written:
            check_grads(jax.jit(apply), (params, x), 1, ["rev"], eps=1e-4)
        else:
            check_grads(jax.jit(apply), (params, x), 2, ["fwd", "rev"], eps=1e-4)


@pytest.mark.parametrize(
    "options, x, lengths, match",
    [
        ({"padding": "CAUSAL"}, X, None, "padding must be one of SAME, VALID"),
        ({"kernel_size": (3,)}, X, None, r"kernel_size must be two positive ints"),
        ({"filters": 0}, X, None, "filters must be positive, got 0"),
        ({}, X[:, 0], None, r"frames \(batch, steps, height, width, channels\), got shape"),
        ({"kernel_size": (6, 3), "padding": "VALID"}, X, None, "smaller than the"),
        ({}, X, np.array([1, 2, 3]), r"lengths must have shape \(2,\)"),
        ({}, X, np.array([1, 4]), r"lengths must be in \[0, 3\]"),
    ],
)
def test_bad_inputs_are_named(options, x, lengths, match):
    layer = ConvLSTM(**{"filters": F, **options})
    with pytest.raises(ValueError, match=match):
        layer.init(jax.random.key(0), x, lengths)


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("padding, use_bias", [("same", True), ("valid", True), ("same", False)])
def test_matches_keras_conv_lstm_2d(return_sequences, padding, use_bias):
    """Keras' weights copied into zoo's layout; Keras' `mask` is not compared: its ConvLSTM2D
    broadcasts a `(B, 1)` mask against `(B, H, W, F)` states and fails (Keras 3.15, JAX)."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    options = {"bias_initializer": "random_normal", "unit_forget_bias": False} if use_bias else {}
    layer = keras.layers.ConvLSTM2D(
        F,
        (3, 2),
        padding=padding,
        use_bias=use_bias,
        return_sequences=return_sequences,
        return_state=True,
        **options,
    )
    with jax.numpy_rank_promotion("allow"):  # Keras' own code broadcasts implicitly
        outputs, keras_h, keras_c = layer(X)
    params = from_keras_convlstm(layer.get_weights())
    zoo_layer = ConvLSTM(F, (3, 2), padding.upper(), return_sequences)
    ours, state = zoo_layer.apply({"params": params}, X)
    assert ours.shape == outputs.shape
    np.testing.assert_allclose(ours, np.asarray(outputs), **TOLERANCE)
    np.testing.assert_allclose(state.h, np.asarray(keras_h), **TOLERANCE)
    np.testing.assert_allclose(state.c, np.asarray(keras_c), **TOLERANCE)


def test_keras_importer_errors_name_the_problem():
    kernel, recurrent = np.zeros((3, 3, 2, 12)), np.zeros((3, 3, 3, 12))
    with pytest.raises(ValueError, match="3 weight arrays"):
        from_keras_convlstm([kernel])
    with pytest.raises(ValueError, match=r"recurrent_kernel has shape \(3, 3, 4, 12\)"):
        from_keras_convlstm([kernel, np.zeros((3, 3, 4, 12)), np.zeros(12)])
    with pytest.raises(ValueError, match=r"bias has shape \(16,\), expected \(12,\)"):
        from_keras_convlstm([kernel, recurrent, np.zeros(16)])
    with pytest.raises(ValueError, match="channels-last"):
        from_keras_convlstm([np.zeros((3, 3, 2, 10)), recurrent, np.zeros(12)])
    params = from_keras_convlstm([kernel, recurrent])
    np.testing.assert_array_equal(params["bias"], np.zeros(12))
