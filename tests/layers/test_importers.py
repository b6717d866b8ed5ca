"""Parity: zoo models with imported weights equal torch.nn.RNN/LSTM/GRU, Keras SimpleRNN/LSTM/GRU,
Flax's RNN cells and a PyTorch CNN. "rnn_relu" is the simple RNN with relu."""

import os

import chex
import jax
import numpy as np
import pytest

from zoo import models
from zoo.layers.importers import (
    cnn_from_torch,
    conv_from_torch,
    dense_from_torch,
    from_flax_cell,
    from_keras,
    from_torch,
    read_state_dict,
)
from zoo.layers.recurrent import StackedRNN

B, T, F, H = 4, 6, 3, 5
LENGTHS = np.array([6, 2, 5, 1])
X = np.random.default_rng(0).normal(size=(B, T, F)).astype(np.float32)
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def zoo_run(params, cell, num_layers, bidirectional, reset_after=True):
    cell, activation = ("rnn", "relu") if cell == "rnn_relu" else (cell, "tanh")
    model = StackedRNN(
        cell,
        (H,) * num_layers,
        bidirectional,
        return_sequences=True,
        reset_after=reset_after,
        activation=activation,
    )
    return model.apply({"params": params}, X, LENGTHS)


def hidden_and_cell(state, cell):
    return (state.h, state.c) if cell == "lstm" else (state, None)


CASES = [
    (cell, layers, bi)
    for cell in ("rnn", "lstm", "gru")
    for layers in (1, 2, 3)
    for bi in (False, True)
] + [("rnn_relu", 2, True)]


@pytest.mark.parametrize("cell, num_layers, bidirectional", CASES)
def test_matches_pytorch_with_padded_lengths(cell, num_layers, bidirectional):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    options = {"num_layers": num_layers, "bidirectional": bidirectional, "batch_first": True}
    if cell == "rnn_relu":
        rnn = torch.nn.RNN(F, H, nonlinearity="relu", **options)
    else:
        rnn = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
            F, H, **options
        )
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(X), torch.from_numpy(LENGTHS), batch_first=True, enforce_sorted=False
    )
    with torch.no_grad():
        out, state = rnn(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    h_n, c_n = state if cell == "lstm" else (state, None)

    params = from_torch(rnn.state_dict(), cell.removesuffix("_relu"))
    outputs, states = zoo_run(params, cell, num_layers, bidirectional)
    np.testing.assert_allclose(outputs, out.numpy(), **TOLERANCE)
    directions = 2 if bidirectional else 1
    for layer, layer_state in enumerate(states):
        per_direction = layer_state if bidirectional else (layer_state,)
        for d, s in enumerate(per_direction):
            h, c = hidden_and_cell(s, cell)
            np.testing.assert_allclose(h, h_n[layer * directions + d].numpy(), **TOLERANCE)
            if cell == "lstm":
                np.testing.assert_allclose(c, c_n[layer * directions + d].numpy(), **TOLERANCE)


KERAS_CASES = [
    ("rnn", 1, False, True),
    ("rnn", 2, True, True),
    ("rnn_relu", 2, False, True),
    ("lstm", 1, False, True),
    ("lstm", 2, True, True),
    ("lstm", 3, False, True),
    ("gru", 1, False, True),
    ("gru", 2, True, True),
    ("gru", 3, False, True),
    ("gru", 1, True, False),
    ("gru", 2, False, False),
]


@pytest.mark.parametrize("cell, num_layers, bidirectional, reset_after", KERAS_CASES)
def test_matches_keras_with_mask(cell, num_layers, bidirectional, reset_after):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    mask = np.arange(T)[None, :] < LENGTHS[:, None]
    h, weights, final_states = X, [], []
    for _ in range(num_layers):
        options = {"return_sequences": True, "return_state": True}
        if cell.startswith("rnn"):
            activation = "relu" if cell == "rnn_relu" else "tanh"
            layer = keras.layers.SimpleRNN(
                H, activation=activation, bias_initializer="random_normal", **options
            )
        elif cell == "lstm":
            layer = keras.layers.LSTM(
                H, unit_forget_bias=False, bias_initializer="random_normal", **options
            )
        else:
            layer = keras.layers.GRU(
                H, reset_after=reset_after, bias_initializer="random_normal", **options
            )
        if bidirectional:
            layer = keras.layers.Bidirectional(layer)
        with jax.numpy_rank_promotion("allow"):  # Keras' own code broadcasts implicitly
            results = layer(h, mask=mask)
        h, states = results[0], results[1:]
        weights.append(layer.get_weights())
        final_states.append(states)

    params = from_keras(
        weights, cell.removesuffix("_relu"), bidirectional=bidirectional, reset_after=reset_after
    )
    outputs, states = zoo_run(params, cell, num_layers, bidirectional, reset_after)
    valid = mask[..., None]
    np.testing.assert_allclose(outputs * valid, np.asarray(h) * valid, **TOLERANCE)
    for layer_state, keras_states in zip(states, final_states, strict=True):
        ours = jax.tree.leaves(layer_state)  # (h, c) per direction, as Keras returns them
        if cell == "lstm":
            ours = [
                leaf
                for s in (layer_state if bidirectional else (layer_state,))
                for leaf in (s.h, s.c)
            ]
        for a, b in zip(ours, keras_states, strict=True):
            np.testing.assert_allclose(a, np.asarray(b), **TOLERANCE)


def test_torch_importer_errors_name_the_problem():
    w = np.zeros((12, 3), np.float32)
    with pytest.raises(ValueError, match="lacks 'weight_hh_l0'"):
        from_torch({"weight_ih_l0": w}, "lstm")
    state = {
        "weight_ih_l0": w,
        "weight_hh_l0": np.zeros((12, 4)),
        "bias_ih_l0": np.zeros(12),
        "bias_hh_l0": np.zeros(12),
    }
    with pytest.raises(ValueError, match="12 gate rows do not fit a LSTM of hidden size 4"):
        from_torch(state, "lstm")
    assert set(from_torch(state, "gru")["layer_0"]) == {
        "kernel",
        "recurrent_kernel",
        "bias",
        "recurrent_bias",
    }
    with pytest.raises(ValueError, match="unknown cell 'elman'"):
        from_torch(state, "elman")
    with pytest.raises(ValueError, match="12 gate rows do not fit a RNN of hidden size 4"):
        from_torch(state, "rnn")


def test_keras_importer_errors_name_the_problem():
    kernel, recurrent = np.zeros((3, 15)), np.zeros((5, 15))
    with pytest.raises(ValueError, match="expects \\(2, 15\\)"):
        from_keras([[kernel, recurrent, np.zeros(15)]], "gru", reset_after=True)
    with pytest.raises(ValueError, match="expected 6 weight arrays"):
        from_keras([[kernel, recurrent, np.zeros((2, 15))]], "gru", bidirectional=True)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "optimized_lstm", "gru"])
def test_flax_cell_matches_flax_rnn(cell):
    import flax.linen as nn

    flax_cell = {
        "rnn": nn.SimpleCell,
        "lstm": nn.LSTMCell,
        "optimized_lstm": nn.OptimizedLSTMCell,
        "gru": nn.GRUCell,
    }
    rnn = nn.RNN(flax_cell[cell](H))
    variables = rnn.init(jax.random.key(4), X)
    expected = rnn.apply(variables, X)
    cell = cell.removeprefix("optimized_")
    layer = from_flax_cell(variables["params"]["cell"], cell)
    outputs, _ = zoo_run({"layer_0": layer}, cell, 1, False)
    full = LENGTHS == T  # zoo zeroes outputs past a sequence's length; Flax ran them all
    np.testing.assert_allclose(outputs[full], expected[full], **TOLERANCE)


def test_flax_cell_importer_names_missing_gates():
    import flax.linen as nn

    variables = nn.RNN(nn.GRUCell(H)).init(jax.random.key(4), X)
    with pytest.raises(ValueError, match=r"Flax LSTM cell params lack \['ii', 'if', 'ig', 'io'"):
        from_flax_cell(variables["params"]["cell"], "lstm")


def test_seed_cnn_matches_pytorch():
    torch = pytest.importorskip("torch")
    from references import torch_seed_cnn

    torch.manual_seed(0)
    net = torch_seed_cnn(torch)
    images = np.random.default_rng(1).normal(size=(3, 28, 28, 1)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    logits = models.create("cnn").apply({"params": cnn_from_torch(net.state_dict())}, images)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_conv_and_dense_importer_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"\(out, in, \*window\); got shape \(4, 3\)"):
        conv_from_torch(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"flattened_from \(64, 3, 3\) has 576 features"):
        dense_from_torch(np.zeros((10, 100)), flattened_from=(64, 3, 3))
    with pytest.raises(ValueError, match=r"three Conv2d then two Linear .* shapes \[\(4, 3\)\]"):
        cnn_from_torch({"fc.weight": np.zeros((4, 3))})


def test_state_dicts_saved_as_safetensors_import_like_the_live_modules(tmp_path):
    torch = pytest.importorskip("torch")
    from references import torch_seed_cnn
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = torch_seed_cnn(torch)
    save_file(net.state_dict(), tmp_path / "cnn.safetensors")  # keys 0., 3., 6., 10., 12.
    chex.assert_trees_all_equal(
        cnn_from_torch(read_state_dict(tmp_path / "cnn.safetensors")),
        cnn_from_torch(net.state_dict()),
    )
    rnn = torch.nn.GRU(F, H, num_layers=2, bidirectional=True, batch_first=True)
    save_file(rnn.state_dict(), tmp_path / "gru.safetensors")
    chex.assert_trees_all_equal(
        from_torch(read_state_dict(tmp_path / "gru.safetensors"), "gru"),
        from_torch(rnn.state_dict(), "gru"),
    )


def test_pickled_checkpoints_are_refused_with_the_way_out(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x04not to be unpickled")
    with pytest.raises(ValueError, match=r"refusing .*model.pt: zoo never unpickles.*save_file"):
        read_state_dict(path)
    (tmp_path / "bad.safetensors").write_bytes(b"nonsense")
    with pytest.raises(ValueError, match="cannot read .*bad.safetensors as safetensors"):
        read_state_dict(tmp_path / "bad.safetensors")
