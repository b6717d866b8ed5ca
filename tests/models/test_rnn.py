import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import models
from zoo.data import pad_sequences
from zoo.layers.recurrent import LSTMState, lstm_cell


def test_classifier_with_lengths_matches_each_sequence_alone(key):
    model = models.create("bigru", input_shape=(None, 3), hidden_sizes=(4, 5), num_classes=6)
    sequences = [np.random.default_rng(i).normal(size=(n, 3)) for i, n in enumerate((5, 2, 4))]
    x, lengths = pad_sequences(sequences)
    variables = model.init(key, x)
    logits = model.apply(variables, x, lengths)
    for i, sequence in enumerate(sequences):
        alone = model.apply(variables, sequence[None].astype(np.float32))
        np.testing.assert_allclose(logits[i], alone[0], rtol=1e-5, atol=1e-6)
    # Leading batch axes carry their lengths along.
    stacked = model.apply(variables, np.stack([x, x]), np.stack([lengths, lengths]))
    np.testing.assert_allclose(stacked[1], logits, rtol=1e-6)


def test_source_documents_lstm_shapes(key):
    model = models.create("lstm", input_shape=(28, 28))
    variables = model.init(key, jnp.zeros((1, 28, 28)))
    params = variables["params"]
    assert params["StackedRNN_0"]["layer_0"]["kernel"].shape == (28, 512)
    assert params["StackedRNN_0"]["layer_1"]["recurrent_kernel"].shape == (128, 512)
    assert params["Dense_0"]["kernel"].shape == (128, 10)


def test_charlm_stepwise_states_equal_one_full_pass(key):
    model = models.create("charlm", num_classes=9, hidden_sizes=(6, 5), embed_dim=3)
    tokens = jax.random.randint(key, (2, 7), 0, 9)
    variables = model.init(key, tokens)
    full = model.apply(variables, tokens)
    logits, states = model.apply(variables, tokens[:, :3], return_states=True)
    for t in range(3, 7):
        step, states = model.apply(
            variables, tokens[:, t : t + 1], initial_states=states, return_states=True
        )
        np.testing.assert_allclose(step[:, 0], full[:, t], rtol=1e-5, atol=1e-6)


def test_sampling_is_seeded_and_follows_the_model(key):
    model = models.create("charlm", num_classes=9, hidden_sizes=(8,), embed_dim=4)
    prompt = jnp.array([[1, 2, 3], [4, 5, 6]])
    variables = model.init(key, prompt)
    a = models.sample(model, variables, prompt, jax.random.key(1), length=6)
    b = models.sample(model, variables, prompt, jax.random.key(1), length=6)
    c = models.sample(model, variables, prompt, jax.random.key(2), length=6)
    assert a.shape == (2, 6) and a.dtype == jnp.int32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 0 <= int(a.min()) and int(a.max()) < 9
    # Near-zero temperature is greedy decoding: each token is the argmax given those before it.
    greedy = models.sample(model, variables, prompt, key, length=5, temperature=1e-4)
    logits = model.apply(variables, jnp.concatenate([prompt, greedy], axis=1))
    np.testing.assert_array_equal(jnp.argmax(logits[:, 2:-1], axis=-1), greedy)


def test_charlm_rejects_token_ids_outside_the_vocabulary(key):
    model = models.create("charlm", num_classes=9, hidden_sizes=(4,), embed_dim=3)
    good = jnp.array([[1, 2, 3]])
    variables = model.init(key, good)
    vocab = r"charlm tokens must be in \[0, 9\) \(the vocabulary size\)"
    for bad, found in ((jnp.array([[-1, 2, 12]]), "-1..12"), (np.array([[2, 9]]), "2..9")):
        with pytest.raises(ValueError, match=rf"{vocab}, found ids {found}"):
            model.apply(variables, bad)
        with pytest.raises(ValueError, match=rf"{vocab}, found ids {found}"):
            model.init(key, bad)
        with pytest.raises(ValueError, match=rf"{vocab}, found ids {found}"):
            models.sample(model, variables, bad, key, length=2)
    # Traced ids are not known; in-range ids pass both ways.
    np.testing.assert_allclose(
        jax.jit(model.apply)(variables, good), model.apply(variables, good), rtol=1e-6
    )


def test_sampling_a_model_built_from_list_options(key):
    from_json = models.create("charlm", num_classes=7, hidden_sizes=[5, 4], embed_dim=3)
    from_tuples = models.create("charlm", num_classes=7, hidden_sizes=(5, 4), embed_dim=3)
    assert from_json.hidden_sizes == (5, 4) and hash(from_json) == hash(from_tuples)
    prompt = jnp.array([[1, 2], [3, 4]])
    variables = from_tuples.init(key, prompt)
    a = models.sample(from_json, variables, prompt, jax.random.key(3), length=5)
    b = models.sample(from_tuples, variables, prompt, jax.random.key(3), length=5)
    assert a.shape == (2, 5)
    np.testing.assert_array_equal(a, b)


def test_untrained_forecaster_is_the_naive_forecast(key):
    model = models.create("forecast", input_shape=(None, 2), horizon=3)
    x = jax.random.normal(key, (4, 6, 2))
    variables = model.init(key, x)
    np.testing.assert_allclose(model.apply(variables, x), np.repeat(x[:, -1, :1], 3, axis=1))
    lengths = jnp.array([6, 2, 4, 1])
    expected = x[jnp.arange(4), lengths - 1, 0][:, None].repeat(3, axis=1)
    np.testing.assert_allclose(model.apply(variables, x, lengths), expected)


@pytest.mark.parametrize(
    "name, options, x, match",
    [
        ("lstm", {"input_shape": (28, 28)}, jnp.zeros((2, 28, 5)), r"\(batch, 28, 28\)"),
        ("lstm", {"input_shape": (None, 4)}, jnp.zeros((2, 9, 5)), r"\(batch, steps, 4\)"),
        ("gru", {"input_shape": (None, 4)}, jnp.zeros((2, 9, 4), jnp.int32), "floating-point"),
        ("charlm", {"num_classes": 5}, jnp.zeros((2, 9)), "integer token ids"),
        (
            "charlm",
            {"num_classes": 5},
            jnp.zeros((2, 9, 1), jnp.int32),
            r"charlm expects integer token ids of shape \(batch, steps\).*got shape \(2, 9, 1\)",
        ),
        (
            "cnn_lstm",
            {"input_shape": (3, 8, 8, 1)},
            jnp.zeros((2, 8, 8, 1)),
            r"\(batch, 3, 8, 8, 1\)",
        ),
    ],
)
def test_bad_inputs_name_the_expected_shape(key, name, options, x, match):
    with pytest.raises(ValueError, match=match):
        models.create(name, **options).init(key, x)


def test_registry_knows_each_models_task():
    assert models.task("cnn") == models.task("bigru") == models.task("cnn_lstm") == "classify"
    assert (models.task("charlm"), models.task("forecast")) == ("language", "regress")
    assert models.task("tagger") == "tag"


def test_bad_lengths_and_options(key):
    model = models.create("lstm", input_shape=(None, 2), hidden_sizes=(3,))
    x = jnp.zeros((2, 4, 2))
    variables = model.init(key, x)
    with pytest.raises(ValueError, match=r"lengths must be in \[0, 4\]"):
        model.apply(variables, x, jnp.array([5, 1]))
    with pytest.raises(ValueError, match=r"lengths must have the batch shape \(2,\)"):
        model.apply(variables, x, jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match="unknown cell 'elman'; choose from: rnn, lstm, gru"):
        models.create("charlm", num_classes=3, cell="elman")
    with pytest.raises(ValueError, match="hidden_sizes must be positive"):
        models.create("gru", input_shape=(4, 2), hidden_sizes=())
    with pytest.raises(ValueError, match="has no option cell"):
        models.create("bilstm", input_shape=(4, 2), cell="gru")


def _lstm_over(params, x, reverse=False):
    """A Python loop of `lstm_cell` over `(B, T, F)`: the outputs `(B, T, H)`."""
    hidden = params["recurrent_kernel"].shape[0]
    carry = LSTMState(jnp.zeros((x.shape[0], hidden)), jnp.zeros((x.shape[0], hidden)))
    outputs = [None] * x.shape[1]
    for t in reversed(range(x.shape[1])) if reverse else range(x.shape[1]):
        carry, outputs[t] = lstm_cell(params, carry, x[:, t])
    return jnp.stack(outputs, axis=1)


def test_tagger_is_a_bidirectional_lstm_and_a_dense_layer_at_every_step(key):
    model = models.create("tagger", vocab_size=7, hidden_sizes=(4,), embed_dim=3, num_classes=5)
    tokens = np.random.default_rng(0).integers(0, 7, (2, 6))
    variables = model.init(key, tokens)
    params = variables["params"]
    h = params["Embed_0"]["embedding"][tokens]  # (B, T, E)
    rnn = params["StackedRNN_0"]
    h = jnp.concatenate(
        [_lstm_over(rnn["layer_0_forward"], h), _lstm_over(rnn["layer_0_backward"], h, True)], -1
    )
    dense = jax.tree.map(np.asarray, params["Dense_0"])
    expected = np.asarray(h) @ dense["kernel"] + dense["bias"]
    np.testing.assert_allclose(model.apply(variables, tokens), expected, rtol=1e-5, atol=1e-6)


def test_tagger_on_a_padded_batch_tags_each_sequence_as_alone(key):
    model = models.create("tagger", vocab_size=None, hidden_sizes=(4, 3), num_classes=3)
    sequences = [np.random.default_rng(i).normal(size=(n, 2)) for i, n in enumerate((5, 2, 4))]
    x, lengths = pad_sequences(sequences, value=9.0)
    variables = model.init(key, x)
    logits = model.apply(variables, x, lengths)  # (3, 5, 3)
    assert logits.shape == (3, 5, 3)
    for i, sequence in enumerate(sequences):
        alone = model.apply(variables, sequence[None].astype(np.float32))[0]
        np.testing.assert_allclose(logits[i, : len(sequence)], alone, rtol=1e-5, atol=1e-6)


def test_tagger_options_and_inputs_are_checked(key):
    with pytest.raises(ValueError, match=r"input_shape must be \(steps,\) of token ids"):
        models.create("tagger", vocab_size=5, input_shape=(6, 2))
    with pytest.raises(ValueError, match=r"or \(steps, features\) without one"):
        models.create("tagger", vocab_size=None, input_shape=(6,))
    model = models.create("tagger", vocab_size=5, hidden_sizes=(2,))
    with pytest.raises(ValueError, match=r"tagger tokens must be in \[0, 5\)"):
        model.init(key, jnp.array([[1, 5]]))
    with pytest.raises(ValueError, match="tagger expects integer token ids"):
        model.init(key, jnp.zeros((1, 3)))
