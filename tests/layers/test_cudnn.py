"""The opt-in cuDNN LSTM path (`zoo.layers.cudnn`, `StackedRNN(implementation="cudnn")`).

On CPU the weight layout, padding and states are checked through `rnn.lstm_ref`, JAX's pure-jnp
reference of cuDNN's kernel with the same flat weights, against zoo's scan; the kernel itself is
checked against the scan on a CUDA GPU only (run by `benchmarks/device_check.sh`).
"""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

from zoo import models
from zoo.layers import cudnn
from zoo.layers.recurrent import LSTMState, StackedRNN

B, T, F, H = 3, 5, 4, 6  # distinct sizes so a transposed axis cannot pass
LENGTHS = jnp.array([5, 2, 3])  # right padded: one sequence of all T steps, two shorter
STACKS = [(1, False), (1, True), (2, False), (2, True)]  # (layers, bidirectional)
STACK_IDS = ["1-layer", "1-layer-bi", "2-layer", "2-layer-bi"]

needs_cuda = pytest.mark.skipif(
    not cudnn.on_cuda(), reason="needs a CUDA GPU for cuDNN's LSTM (benchmarks/device_check.sh)"
)


@pytest.fixture(autouse=True)
def _full_float32_precision():
    """Float32 dots at full precision wherever these run: JAX's GPU default is TF32, whose error
    is above the tolerances here (the same on CPU, where it changes nothing)."""
    with jax.default_matmul_precision("highest"):
        yield


def random_like(tree, key, scale=0.5):
    """Every leaf of `tree` redrawn from N(0, scale²): nonzero biases too, unlike the init."""
    leaves, structure = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    drawn = [scale * jax.random.normal(k, jnp.shape(a)) for k, a in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(structure, drawn)


def random_states(key, layers, bidirectional):
    """One `LSTMState` per layer and direction, drawn: nonzero `h_0` and `c_0` show where each
    lands in cuDNN's stacked `(L * D, B, H)` state."""
    keys = iter(jax.random.split(key, 4 * layers))

    def state():
        return LSTMState(
            jax.random.normal(next(keys), (B, H)), jax.random.normal(next(keys), (B, H))
        )

    return [(state(), state()) if bidirectional else state() for _ in range(layers)]


def scan_stack(layers, bidirectional, **options):
    return StackedRNN("lstm", (H,) * layers, bidirectional=bidirectional, **options)


def stack_params(key, layers, bidirectional):
    x = jnp.zeros((B, T, F))
    variables = scan_stack(layers, bidirectional).init(key, x, LENGTHS)
    return random_like(variables["params"], jax.random.fold_in(key, 1))


def weighted_sum(tree, probe):
    """`sum(leaf * probe leaf)`: a loss whose gradient is `probe`, reaching every leaf."""
    pairs = zip(jax.tree.leaves(tree), jax.tree.leaves(probe), strict=True)
    return sum(jnp.vdot(a, p) for a, p in pairs)


def assert_trees_close(actual, expected, tolerance):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, e, rtol=tolerance, atol=tolerance)


@pytest.fixture
def cudnn_on_cpu(monkeypatch):
    """The 'cudnn' kernel with `rnn.lstm` replaced by `rnn.lstm_ref` on the same flat weights,
    and the CUDA check lifted: everything but the kernel runs as on a GPU. Returns the calls."""
    calls = []

    def lstm(
        x,
        h_0,
        c_0,
        weights,
        seq_lengths,
        input_size,
        hidden_size,
        num_layers,
        dropout,
        bidirectional,
        precision=None,
    ):
        calls.append((input_size, hidden_size, num_layers, bidirectional))
        unpacked = rnn.unpack_lstm_weights(
            weights, input_size, hidden_size, num_layers, bidirectional
        )
        sizes = (input_size, hidden_size, num_layers, dropout, bidirectional)
        return rnn.lstm_ref(x, h_0, c_0, *unpacked, seq_lengths, *sizes)

    monkeypatch.setattr(cudnn, "_require_cuda", lambda: None)
    monkeypatch.setattr(cudnn.rnn, "lstm", lstm)
    return calls


@pytest.mark.parametrize("layers, bidirectional", STACKS, ids=STACK_IDS)
@pytest.mark.parametrize("with_states", [False, True], ids=["zero-states", "given-states"])
def test_packed_weights_through_the_reference_kernel_give_the_scan(
    key, layers, bidirectional, with_states
):
    params = stack_params(key, layers, bidirectional)
    x = jax.random.normal(jax.random.fold_in(key, 2), (B, T, F))
    states = (
        random_states(jax.random.fold_in(key, 3), layers, bidirectional) if with_states else None
    )
    rnn_scan = scan_stack(layers, bidirectional, return_sequences=True)
    expected = rnn_scan.apply({"params": params}, x, LENGTHS, initial_states=states)
    actual = cudnn.stacked_lstm(params, x, LENGTHS, initial_states=states, kernel="reference")
    assert actual[0].shape == (B, T, H * (2 if bidirectional else 1))
    assert_trees_close(actual, expected, 1e-5)


@pytest.mark.parametrize("layers, bidirectional", STACKS, ids=STACK_IDS)
def test_jax_initialised_weights_unpack_to_params_the_scan_agrees_with(key, layers, bidirectional):
    """The inverse map checked from the other side: JAX's own random flat weights (both biases
    nonzero) through `lstm_ref` directly, against zoo's scan on the unpacked params."""
    weights = rnn.init_lstm_weight(key, F, H, layers, bidirectional)
    params = cudnn.params_from_lstm_weights(weights, F, H, layers, bidirectional)
    x = jax.random.normal(jax.random.fold_in(key, 2), (B, T, F))
    directions = 2 if bidirectional else 1
    zeros = jnp.zeros((layers * directions, B, H))
    unpacked = rnn.unpack_lstm_weights(weights, F, H, layers, bidirectional)
    y, h_n, c_n = rnn.lstm_ref(
        x, zeros, zeros, *unpacked, LENGTHS.astype(jnp.int32), F, H, layers, 0.0, bidirectional
    )
    outputs, states = scan_stack(layers, bidirectional, return_sequences=True).apply(
        {"params": params}, x, LENGTHS
    )
    np.testing.assert_allclose(outputs, y, rtol=1e-5, atol=1e-5)
    flat = [s for layer in states for s in (layer if bidirectional else (layer,))]
    np.testing.assert_allclose(jnp.stack([s.h for s in flat]), h_n, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jnp.stack([s.c for s in flat]), c_n, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layers, bidirectional", STACKS, ids=STACK_IDS)
def test_packing_round_trips_and_fills_cudnns_vector(key, layers, bidirectional):
    params = stack_params(key, layers, bidirectional)
    weights = cudnn.pack_lstm_weights(params, F, H, layers, bidirectional)
    assert weights.shape == (rnn.get_num_params_in_lstm(F, H, layers, bidirectional),)
    back = cudnn.params_from_lstm_weights(weights, F, H, layers, bidirectional)
    assert_trees_close(back, params, 0.0)
    _, _, _, b_hh = rnn.unpack_lstm_weights(weights, F, H, layers, bidirectional)
    assert all(not np.any(b) for b in b_hh.values())  # zoo's one bias goes to b_ih


@pytest.mark.parametrize("layers, bidirectional", [(2, False), (2, True)], ids=STACK_IDS[2:])
def test_gradients_through_the_reference_kernel_are_the_scans(key, layers, bidirectional):
    params = stack_params(key, layers, bidirectional)
    x = jax.random.normal(jax.random.fold_in(key, 2), (B, T, F))
    states = random_states(jax.random.fold_in(key, 3), layers, bidirectional)
    probe = random_like(
        scan_stack(layers, bidirectional, return_sequences=True).apply(
            {"params": params}, x, LENGTHS, initial_states=states
        ),
        jax.random.fold_in(key, 4),
    )  # a random cotangent for every output and final state

    def loss(run, params, x, states):
        return weighted_sum(run(params, x, states), probe)

    def scan(params, x, states):
        rnn_scan = scan_stack(layers, bidirectional, return_sequences=True)
        return rnn_scan.apply({"params": params}, x, LENGTHS, initial_states=states)

    def reference(params, x, states):
        return cudnn.stacked_lstm(params, x, LENGTHS, initial_states=states, kernel="reference")

    expected = jax.grad(functools.partial(loss, scan), argnums=(0, 1, 2))(params, x, states)
    actual = jax.grad(functools.partial(loss, reference), argnums=(0, 1, 2))(params, x, states)
    assert_trees_close(actual, expected, 1e-5)


@pytest.mark.parametrize("return_sequences", [False, True])
def test_stacked_rnn_cudnn_has_the_scans_params_and_results(key, cudnn_on_cpu, return_sequences):
    """Everything of `implementation='cudnn'` but cuDNN's kernel: the same params, initial
    values included, so weights move between the two paths; the same outputs and states."""
    x = jax.random.normal(jax.random.fold_in(key, 2), (B, T, F))
    states = random_states(jax.random.fold_in(key, 3), 2, True)
    options = {"return_sequences": return_sequences}
    rnn_scan = scan_stack(2, True, **options)
    rnn_cudnn = scan_stack(2, True, implementation="cudnn", **options)
    variables = rnn_scan.init(key, x, LENGTHS)
    assert_trees_close(rnn_cudnn.init(key, x, LENGTHS), variables, 0.0)
    expected = rnn_scan.apply(variables, x, LENGTHS, initial_states=states)
    actual = rnn_cudnn.apply(variables, x, LENGTHS, initial_states=states)
    assert_trees_close(actual, expected, 1e-5)
    assert cudnn_on_cpu[-1] == (F, H, 2, True)


def test_the_lstm_model_takes_the_option(key, cudnn_on_cpu):
    assert models.options("lstm")["implementation"].default == "scan"
    assert models.options("tagger")["implementation"].default == "scan"
    scan = models.create("lstm", input_shape=(T, F), hidden_sizes=(H, H))
    fused = models.create("lstm", input_shape=(T, F), hidden_sizes=(H, H), implementation="cudnn")
    x = jax.random.normal(key, (B, T, F))
    variables = scan.init(key, x, LENGTHS)
    np.testing.assert_allclose(
        fused.apply(variables, x, LENGTHS), scan.apply(variables, x, LENGTHS), atol=1e-5
    )
    assert cudnn_on_cpu, "the cudnn path did not run"


def test_the_choice_is_logged_once(key, cudnn_on_cpu, caplog):
    cudnn._log_once.cache_clear()
    rnn_cudnn = scan_stack(1, False, implementation="cudnn")
    x = jnp.zeros((B, T, F))
    with caplog.at_level(logging.WARNING, logger="zoo.layers.cudnn"):
        variables = rnn_cudnn.init(key, x)
        rnn_cudnn.apply(variables, x)
    assert [r.getMessage() for r in caplog.records] == [
        "StackedRNN implementation='cudnn': cuDNN's fused LSTM (jax.experimental.rnn) runs "
        "1 layer(s) of 6, bidirectional=False, instead of zoo's scan (experimental)"
    ]


@pytest.mark.parametrize(
    "options, match",
    [
        ({"implementation": "fused"}, r"unknown implementation 'fused'; choose from: scan, cudnn"),
        ({"cell": "gru"}, r"runs LSTMs only, not cell='gru'"),
        ({"hidden_sizes": (H, 5)}, r"one hidden size for every layer .*=\(6, 5\)"),
        ({"recurrent_dropout": 0.25}, r"no recurrent dropout .* recurrent_dropout=0.25"),
        ({"dtype": jnp.bfloat16}, r"float32 only .* bfloat16"),
    ],
)
def test_stacked_rnn_refuses_what_cudnn_cannot_run(key, options, match):
    options = {"cell": "lstm", "hidden_sizes": (H, H), "implementation": "cudnn", **options}
    with pytest.raises(ValueError, match=match):
        StackedRNN(**options).init(key, jnp.zeros((B, T, F)), LENGTHS)


def test_dropout_between_layers_is_refused_in_training_only(key, cudnn_on_cpu):
    rnn_cudnn = StackedRNN("lstm", (H, H), dropout=0.5, implementation="cudnn")
    x = jnp.zeros((B, T, F))
    variables = rnn_cudnn.init(key, x)  # evaluation: no dropout, so cuDNN applies
    with pytest.raises(ValueError, match=r"cannot apply dropout=0.5 between layers in training"):
        rnn_cudnn.apply(variables, x, train=True, rngs={"dropout": key})


def test_empty_sequences_are_refused(key):
    params = stack_params(key, 1, False)
    with pytest.raises(ValueError, match=r"at least one step, got lengths \[5, 0, 3\]"):
        cudnn.stacked_lstm(params, jnp.zeros((B, T, F)), jnp.array([5, 0, 3]), kernel="reference")


def test_params_of_another_stack_are_refused(key):
    params = stack_params(key, 2, False)
    with pytest.raises(ValueError, match=r"params have layers \['layer_0', 'layer_1'\]; .*"):
        cudnn.pack_lstm_weights(params, F, H, 1, False)
    gru = StackedRNN("gru", (H,)).init(key, jnp.zeros((B, T, F)))["params"]
    with pytest.raises(ValueError, match=r"params\['layer_0'\] has shapes .* an LSTM's"):
        cudnn.pack_lstm_weights(gru, F, H, 1, False)
    with pytest.raises(ValueError, match=r"unknown kernel 'xla'; choose from: cudnn, reference"):
        cudnn.stacked_lstm(params, jnp.zeros((B, T, F)), kernel="xla")


def test_the_models_refuse_cudnn_for_another_cell_when_created():
    with pytest.raises(ValueError, match=r"runs LSTMs only, not cell='gru'"):
        models.create("gru", implementation="cudnn")
    with pytest.raises(ValueError, match=r"unknown implementation 'cuda'"):
        models.create("bilstm", implementation="cuda")


@pytest.mark.skipif(cudnn.on_cuda(), reason="checks the refusal away from a CUDA GPU")
def test_away_from_cuda_it_raises_instead_of_falling_back(key):
    rnn_cudnn = StackedRNN("lstm", (H,), implementation="cudnn")
    backend = jax.default_backend()
    with pytest.raises(ValueError, match=rf"needs a CUDA GPU .* backend is '{backend}'"):
        rnn_cudnn.init(key, jnp.zeros((B, T, F)), LENGTHS)


# On a CUDA GPU: cuDNN's kernel itself against the scan.


@needs_cuda
@pytest.mark.parametrize("layers, bidirectional", STACKS, ids=STACK_IDS)
def test_cudnn_matches_the_scan_on_gpu(key, layers, bidirectional):
    x = jax.random.normal(jax.random.fold_in(key, 2), (B, T, F))
    states = random_states(jax.random.fold_in(key, 3), layers, bidirectional)
    rnn_scan = scan_stack(layers, bidirectional, return_sequences=True)
    rnn_cudnn = scan_stack(layers, bidirectional, return_sequences=True, implementation="cudnn")
    params = stack_params(key, layers, bidirectional)

    def run(module, params, x, states):
        return module.apply({"params": params}, x, LENGTHS, initial_states=states)

    probe = random_like(run(rnn_scan, params, x, states), jax.random.fold_in(key, 4))

    def loss(module, params, x, states):
        return weighted_sum(run(module, params, x, states), probe)

    for module_run in (run, jax.jit(run, static_argnums=0)):
        expected = module_run(rnn_scan, params, x, states)
        assert_trees_close(module_run(rnn_cudnn, params, x, states), expected, 1e-4)
    grad = jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)
    assert_trees_close(grad(rnn_cudnn, params, x, states), grad(rnn_scan, params, x, states), 1e-4)


@needs_cuda
def test_the_lstm_model_with_cudnn_matches_the_scan_on_gpu(key):
    scan = models.create("bilstm", input_shape=(T, F), hidden_sizes=(H, H))
    fused = models.create("bilstm", input_shape=(T, F), hidden_sizes=(H, H), implementation="cudnn")
    x = jax.random.normal(key, (B, T, F))
    variables = scan.init(key, x, LENGTHS)

    def loss(model, params):
        return jnp.sum(jnp.sin(model.apply({"params": params}, x, LENGTHS)))

    np.testing.assert_allclose(
        fused.apply(variables, x, LENGTHS), scan.apply(variables, x, LENGTHS), atol=1e-4
    )
    grad = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)
    assert_trees_close(grad(fused, variables["params"]), grad(scan, variables["params"]), 1e-4)
