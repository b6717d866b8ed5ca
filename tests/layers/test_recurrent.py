import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from zoo import runtime
from zoo.layers import recurrent
from zoo.layers.recurrent import (
    LSTMState,
    Recurrent,
    StackedRNN,
    gru_cell,
    initial_carry,
    lstm_cell,
    rnn_cell,
    scan_cell,
    scan_steps,
)

B, T, F, H = 3, 5, 4, 2  # distinct sizes so a transposed axis cannot pass


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def numpy_rnn_step(p, h, x, activation):
    W, U, b = (np.asarray(p[k], np.float64) for k in ("kernel", "recurrent_kernel", "bias"))
    pre = x @ W + h @ U + b
    return np.tanh(pre) if activation == "tanh" else np.maximum(pre, 0.0)


def numpy_lstm_step(p, h, c, x):
    """Written from the equations, gate by gate, in float64."""
    W, U, b = (np.asarray(p[k], np.float64) for k in ("kernel", "recurrent_kernel", "bias"))
    n = U.shape[0]

    def pre(k):
        gate = slice(k * n, (k + 1) * n)
        return x @ W[:, gate] + h @ U[:, gate] + b[gate]

    i, f, g, o = sigmoid(pre(0)), sigmoid(pre(1)), np.tanh(pre(2)), sigmoid(pre(3))
    c = f * c + i * g
    return o * np.tanh(c), c


def numpy_gru_step(p, h, x, reset_after, h_mask=1.0):
    """`h_mask` (recurrent dropout) scales the h of the matmuls only, not of `z * h` (Keras)."""
    W, U, b = (np.asarray(p[k], np.float64) for k in ("kernel", "recurrent_kernel", "bias"))
    n = U.shape[0]
    rb = np.asarray(p["recurrent_bias"], np.float64) if reset_after else np.zeros(3 * n)
    part = lambda m, k: m[..., k * n : (k + 1) * n]  # noqa: E731
    hd = h * h_mask
    r = sigmoid(x @ part(W, 0) + part(b, 0) + hd @ part(U, 0) + part(rb, 0))
    z = sigmoid(x @ part(W, 1) + part(b, 1) + hd @ part(U, 1) + part(rb, 1))
    if reset_after:
        cand = np.tanh(x @ part(W, 2) + part(b, 2) + r * (hd @ part(U, 2) + part(rb, 2)))
    else:
        cand = np.tanh(x @ part(W, 2) + part(b, 2) + (r * hd) @ part(U, 2))
    return (1 - z) * cand + z * h


def random_params(cell, key, features=F, hidden=H, reset_after=True):
    gates = recurrent.GATES[cell]
    keys = jax.random.split(key, 4)
    p = {
        "kernel": jax.random.normal(keys[0], (features, gates * hidden)),
        "recurrent_kernel": jax.random.normal(keys[1], (hidden, gates * hidden)),
        "bias": jax.random.normal(keys[2], (gates * hidden,)),
    }
    if cell == "gru" and reset_after:
        p["recurrent_bias"] = jax.random.normal(keys[3], (gates * hidden,))
    return p


class TestCells(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_rnn_cell_matches_numpy(self):
        p = random_params("rnn", jax.random.key(0))
        h, x = (np.random.default_rng(i).normal(size=s) for i, s in enumerate([(B, H), (B, F)]))
        for activation in ("tanh", "relu"):
            cell = self.variant(lambda p, h, x, a=activation: rnn_cell(p, h, x, activation=a))
            new_h, y = cell(p, jnp.array(h), x)
            expected = numpy_rnn_step(p, h, x, activation)
            np.testing.assert_allclose(new_h, expected, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(y, new_h)
        assert (expected == 0).any() and (expected > 0).any()  # relu's both sides were seen

    @chex.variants(with_jit=True, without_jit=True)
    def test_lstm_cell_matches_numpy(self):
        p = random_params("lstm", jax.random.key(0))
        h, c, x = (
            np.random.default_rng(i).normal(size=s) for i, s in enumerate([(B, H), (B, H), (B, F)])
        )
        (new_h, new_c), y = self.variant(lstm_cell)(p, LSTMState(jnp.array(h), jnp.array(c)), x)
        ref_h, ref_c = numpy_lstm_step(p, h, c, x)
        np.testing.assert_allclose(new_h, ref_h, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new_c, ref_c, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(y, new_h)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gru_cell_matches_numpy(self):
        for reset_after in (True, False):
            p = random_params("gru", jax.random.key(1), reset_after=reset_after)
            h, x = (
                np.random.default_rng(0).normal(size=(B, H)),
                np.random.default_rng(1).normal(size=(B, F)),
            )
            cell = self.variant(lambda p, h, x, ra=reset_after: gru_cell(p, h, x, reset_after=ra))
            new_h, y = cell(p, jnp.array(h), x)
            np.testing.assert_allclose(
                new_h, numpy_gru_step(p, h, x, reset_after), rtol=1e-5, atol=1e-6
            )


def layer_params(cell, reset_after=True):
    layer = Recurrent(cell, H, reset_after=reset_after)
    return layer, layer.init(jax.random.key(2), jnp.zeros((B, T, F)))


@pytest.fixture(params=["project-per-step", "hand-written", "project-before-scan"])
def lowering(request, monkeypatch):
    """Every lowering of the layers, whatever this machine's backend picks: the input projection
    in each step (CPU) or before the scan (GPU, TPU), and on CPU inside
    `runtime.hand_written_gradients()` (zoo's train steps) the hand-written gradient."""
    hoist = request.param == "project-before-scan"
    monkeypatch.setattr(recurrent, "hoist_input_projection", lambda: hoist)
    if request.param == "hand-written":
        monkeypatch.setattr(runtime, "using_hand_written_gradients", lambda: True)
    return request.param


# (cell, Recurrent's options): every cell and variant.
CELLS = [
    ("rnn", {}),
    ("rnn", {"activation": "relu"}),
    ("lstm", {}),
    ("gru", {}),
    ("gru", {"reset_after": False}),
]


def plain_cell(cell, options):
    """The pure step function of a layer with these options."""
    if cell == "rnn":
        return lambda p, c, x, **kw: rnn_cell(
            p, c, x, activation=options.get("activation", "tanh"), **kw
        )
    if cell == "gru":
        return lambda p, c, x, **kw: gru_cell(
            p, c, x, reset_after=options.get("reset_after", True), **kw
        )
    return lstm_cell


@pytest.mark.parametrize("cell, options", CELLS, ids=lambda v: str(v))
@pytest.mark.parametrize("reverse", [False, True])
def test_scanned_layer_matches_python_loop_of_cell(lowering, cell, options, reverse):
    layer = Recurrent(cell, H, reverse=reverse, **options)
    x = jax.random.normal(jax.random.key(3), (B, T, F))
    variables = layer.init(jax.random.key(2), x)
    final, outputs = jax.jit(layer.apply)(variables, x)
    p = variables["params"]
    step = plain_cell(cell, options)
    carry, expected = initial_carry(cell, B, H), [None] * T
    for t in reversed(range(T)) if reverse else range(T):
        carry, expected[t] = step(p, carry, x[:, t])
    np.testing.assert_allclose(outputs, jnp.stack(expected, 1), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(final, carry, rtol=1e-5, atol=1e-6)


def test_unroll_gives_the_same_result():
    x = jax.random.normal(jax.random.key(4), (B, T, F))
    variables = Recurrent("lstm", H).init(jax.random.key(0), x)
    rolled = Recurrent("lstm", H).apply(variables, x)
    unrolled = Recurrent("lstm", H, unroll=4).apply(variables, x)
    chex.assert_trees_all_close(rolled, unrolled, rtol=1e-6)


def test_lstm_forget_bias_starts_at_one():
    _, variables = layer_params("lstm")
    bias = variables["params"]["bias"]
    np.testing.assert_array_equal(bias, np.r_[np.zeros(H), np.ones(H), np.zeros(2 * H)])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padded_batch_matches_each_sequence_alone(cell, bidirectional):
    model = StackedRNN(cell, (H, 3), bidirectional=bidirectional, return_sequences=True)
    lengths = np.array([5, 2, 4])
    x = np.array(jax.random.normal(jax.random.key(5), (B, T, F)))
    x[np.arange(T)[None, :] >= lengths[:, None]] = 99.0  # garbage padding must not leak in
    variables = model.init(jax.random.key(6), x, lengths)
    outputs, states = model.apply(variables, x, lengths)
    last, _ = StackedRNN(cell, (H, 3), bidirectional=bidirectional).apply(variables, x, lengths)
    for i, n in enumerate(lengths):
        alone, alone_states = model.apply(variables, x[i : i + 1, :n])
        np.testing.assert_allclose(outputs[i, :n], alone[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(outputs[i, n:], 0.0)
        chex.assert_trees_all_close(
            jax.tree.map(lambda s, i=i: s[i], states),
            jax.tree.map(lambda s: s[0], alone_states),
            rtol=1e-5,
            atol=1e-6,
        )
        alone_last, _ = StackedRNN(cell, (H, 3), bidirectional=bidirectional).apply(
            variables, x[i : i + 1, :n]
        )
        np.testing.assert_allclose(last[i], alone_last[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_gradients_through_scan_match_finite_differences(lowering, cell):
    # Both directions, padding, recurrent dropout and the initial state's gradient; forward mode
    # too, except through the hand-written (reverse-only) gradient.
    model = StackedRNN(
        cell, (H,), bidirectional=True, return_sequences=True, recurrent_dropout=0.25
    )
    x = jax.random.normal(jax.random.key(7), (2, 4, 3))
    lengths = jnp.array([4, 2])
    variables = model.init(jax.random.key(8), x, lengths)
    rngs = {"dropout": jax.random.key(9)}

    def loss(params, x, state):
        y, _ = model.apply(
            {"params": params}, x, lengths, initial_states=[state], train=True, rngs=rngs
        )
        return jnp.sum(jnp.sin(y))

    state = (initial_carry(cell, 2, H), initial_carry(cell, 2, H))
    state = jax.tree.map(lambda a: jax.random.normal(jax.random.key(10), a.shape), state)
    as64 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)  # noqa: E731
    with jax.enable_x64(True):
        args = (as64(variables["params"]), as64(x), as64(state))
        if lowering == "hand-written":  # its own backward pass, to second order
            check_grads(jax.jit(loss), args, order=2, modes=["rev"], eps=1e-4)
        else:  # JAX's autodiff of plain layers, both modes
            check_grads(jax.jit(loss), args, order=1, modes=["fwd", "rev"], eps=1e-4)


@pytest.mark.parametrize("transposed_width", [0, H], ids=["u-folded", "u-copied"])
@pytest.mark.parametrize(
    "cell, options", [c for c in CELLS if c != ("gru", {"reset_after": False})]
)
def test_scan_cell_matches_autodiff_of_scan_steps_under_vmap(
    cell, options, transposed_width, monkeypatch
):
    # scan_cell's hand-written gradient against JAX's own through a scan of the plain cell,
    # with padding, a recurrent dropout mask and the initial carry; vmapped over two batches;
    # with the backward loop's `U.T` folded into its dot and copied once before the loop.
    monkeypatch.setattr(recurrent, "TRANSPOSED_WIDTH", transposed_width)
    params = random_params(cell, jax.random.key(11))
    x = jax.random.normal(jax.random.key(12), (2, B, T, F))
    mask = jnp.arange(T)[None, None, :] < jnp.array([[5, 2, 4], [1, 5, 3]])[..., None]
    h_mask = jax.random.uniform(jax.random.key(13), (2, B, H))
    carry = jax.tree.map(
        lambda a: jax.random.normal(jax.random.key(14), (2, *a.shape)), initial_carry(cell, B, H)
    )
    step = plain_cell(cell, options)

    def hand(params, carry, x, mask, h_mask):
        final, ys = scan_cell(cell, params, carry, x, mask, h_mask=h_mask, reverse=True, **options)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.cos(_hidden(final)))

    def reference(params, carry, x, mask, h_mask):
        cell_step = lambda p, c, x: step(p, c, x, h_mask=h_mask)  # noqa: E731
        final, ys = scan_steps(cell_step, params, carry, x, mask, reverse=True)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.cos(_hidden(final)))

    grads = [
        jax.jit(jax.vmap(jax.value_and_grad(f, argnums=(0, 1, 2)), in_axes=(None, 0, 0, 0, 0)))(
            params, carry, x, mask, h_mask
        )
        for f in (hand, reference)
    ]
    chex.assert_trees_all_close(*grads, rtol=1e-5, atol=1e-5)


def _hidden(carry):
    return carry.h if isinstance(carry, LSTMState) else carry


def test_scan_cell_rejects_bad_cells():
    x, carry = jnp.zeros((B, T, F)), initial_carry("gru", B, H)
    with pytest.raises(ValueError, match="unknown cell 'elman'"):
        scan_cell("elman", random_params("gru", jax.random.key(0)), carry, x)
    with pytest.raises(ValueError, match="unknown activation 'sigmoid'; choose from: tanh, relu"):
        scan_cell("rnn", random_params("rnn", jax.random.key(0)), carry, x, activation="sigmoid")
    with pytest.raises(ValueError, match="activation='relu' applies to cell='rnn' only, not 'gru'"):
        Recurrent("gru", H, activation="relu").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="recurrent_bias"):
        scan_cell("gru", random_params("gru", jax.random.key(0), reset_after=False), carry, x)


def test_gru_reset_before_gradients_match_finite_differences():
    model = StackedRNN("gru", (H,), return_sequences=True, reset_after=False)
    x = jax.random.normal(jax.random.key(7), (2, 4, 3))
    variables = model.init(jax.random.key(8), x)
    loss = lambda params, x: jnp.sum(jnp.sin(model.apply({"params": params}, x)[0]))  # noqa: E731
    as64 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)  # noqa: E731
    with jax.enable_x64(True):
        args = (as64(variables["params"]), as64(x))
        check_grads(jax.jit(loss), args, order=2, modes=["rev"], eps=1e-4)


class TestShapes(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_stacked_shapes(self):
        for cell in ("rnn", "lstm", "gru"):
            for bidirectional in (False, True):
                for return_sequences in (False, True):
                    model = StackedRNN(cell, (6, 5), bidirectional, return_sequences)
                    x = jnp.ones((B, T, F))
                    variables = model.init(jax.random.key(0), x)
                    y, states = self.variant(model.apply)(variables, x)
                    width = 10 if bidirectional else 5
                    chex.assert_shape(y, (B, T, width) if return_sequences else (B, width))
                    assert len(states) == 2


def test_initial_state_is_used():
    model = StackedRNN("lstm", (H,), return_sequences=True)
    x = jnp.ones((B, T, F))
    variables = model.init(jax.random.key(0), x)
    zero, _ = model.apply(variables, x)
    start = LSTMState(jnp.ones((B, H)), jnp.ones((B, H)))
    given, _ = model.apply(variables, x, initial_states=[start])
    assert not np.allclose(zero, given)
    with pytest.raises(ValueError, match="one state per layer"):
        model.apply(variables, x, initial_states=[start, start])


@pytest.mark.parametrize(
    "x, lengths, match",
    [
        (jnp.ones((B, T)), None, r"\(batch, steps, features\)"),
        (jnp.ones((B, T, F)), jnp.array([1, 2, 9]), r"lengths must be in \[0, 5\]"),
        (jnp.ones((B, T, F)), jnp.array([1, -1, 2]), r"lengths must be in \[0, 5\]"),
        (jnp.ones((B, T, F)), jnp.array([1, 2]), r"lengths must have shape \(3,\)"),
        (jnp.ones((B, T, F)), jnp.array([1.0, 2.0, 3.0]), "lengths must be integers"),
    ],
)
def test_bad_inputs_are_named(x, lengths, match):
    layer = Recurrent("lstm", H)
    variables = layer.init(jax.random.key(0), jnp.ones((B, T, F)))
    with pytest.raises(ValueError, match=match):
        layer.apply(variables, x, lengths)


def test_wrong_feature_size_is_reported():
    layer = Recurrent("gru", H)
    variables = layer.init(jax.random.key(0), jnp.ones((B, T, F)))
    with pytest.raises(Exception, match=r"kernel.*\(4, 6\).*\(7, 6\)|\(7, 6\).*\(4, 6\)"):
        layer.apply(variables, jnp.ones((B, T, 7)))


@pytest.mark.parametrize(
    "cell, reset_after", [("rnn", True), ("lstm", True), ("gru", True), ("gru", False)]
)
def test_recurrent_dropout_uses_one_mask_per_sequence(cell, reset_after):
    """The mask is drawn once, (B, H), and the layer equals a NumPy loop using it at every step."""
    rate, hidden = 0.5, 6
    layer = Recurrent(cell, hidden, reset_after=reset_after, recurrent_dropout=rate)
    x = jax.random.normal(jax.random.key(3), (B, T, F))
    variables = layer.init(jax.random.key(2), x)
    (_, outputs), sown = layer.apply(
        variables, x, train=True, rngs={"dropout": jax.random.key(7)}, mutable=["intermediates"]
    )
    (mask,) = sown["intermediates"]["recurrent_mask"]
    assert mask.shape == (B, hidden)
    assert set(np.unique(mask)) == {0.0, 1 / (1 - rate)}
    assert len({tuple(row) for row in np.asarray(mask)}) > 1  # each sequence its own mask

    p, xs, m = variables["params"], np.asarray(x, np.float64), np.asarray(mask, np.float64)
    h = c = np.zeros((B, hidden))
    for t in range(T):
        if cell == "rnn":
            h = numpy_rnn_step(p, h * m, xs[:, t], "tanh")
        elif cell == "lstm":
            h, c = numpy_lstm_step(p, h * m, c, xs[:, t])
        else:
            h = numpy_gru_step(p, h, xs[:, t], reset_after, h_mask=m)
        np.testing.assert_allclose(outputs[:, t], h, rtol=1e-4, atol=1e-5)

    evaluation = layer.apply(variables, x)  # train=False: no dropout
    plain = Recurrent(cell, hidden, reset_after=reset_after).apply(variables, x)
    chex.assert_trees_all_close(evaluation, plain)
    assert not np.allclose(evaluation[1], outputs)


def test_stacked_rnn_passes_recurrent_dropout_to_every_layer():
    rnn = StackedRNN("lstm", (H, H), bidirectional=True, recurrent_dropout=0.3)
    x = jnp.ones((B, T, F))
    variables = rnn.init(jax.random.key(0), x)
    _, sown = rnn.apply(
        variables, x, train=True, rngs={"dropout": jax.random.key(1)}, mutable=["intermediates"]
    )
    assert len(jax.tree.leaves(sown)) == 4  # two layers, two directions


def test_bad_recurrent_dropout_is_named():
    x = jnp.ones((B, T, F))
    with pytest.raises(ValueError, match="recurrent_dropout must be in"):
        Recurrent("lstm", H, recurrent_dropout=1.0).init(jax.random.key(0), x)
