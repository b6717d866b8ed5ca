"""Sequences of different lengths through the train and eval steps: padding never counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import models
from zoo.data.batching import Batch
from zoo.training import TrainConfig, create_train_state
from zoo.training.steps import eval_step, loss_fn

LENGTHS = np.array([5, 2, 7, 1], np.int32)
STEPS = 7


def _state(name, example, **options):
    model = models.create(name, **options)
    return create_train_state(model, TrainConfig(model=name), example, models.task(name))


def _padded(x, pad_value):
    steps = np.arange(x.shape[1]).reshape(1, -1, *([1] * (x.ndim - 2)))
    valid = steps < LENGTHS.reshape(-1, *([1] * (x.ndim - 1)))
    return np.where(valid, x, pad_value).astype(x.dtype)


@jax.jit
def _loss_and_grads(state, batch):
    key = jax.random.key(0)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state, batch, key)
    return loss, grads


CASES = {
    "gru": (
        lambda rng: rng.normal(size=(4, STEPS, 3)).astype(np.float32),
        lambda rng: rng.integers(0, 3, 4),
    ),
    "bilstm": (
        lambda rng: rng.normal(size=(4, STEPS, 3)).astype(np.float32),
        lambda rng: rng.integers(0, 3, 4),
    ),
    "charlm": (
        lambda rng: rng.integers(0, 11, (4, STEPS)),
        lambda rng: rng.integers(0, 11, (4, STEPS)),
    ),
    "tagger": (
        lambda rng: rng.integers(0, 11, (4, STEPS)),
        lambda rng: rng.integers(0, 3, (4, STEPS)),
    ),
}
OPTIONS = {
    "gru": {"num_classes": 3, "hidden_sizes": (6,), "input_shape": (None, 3)},
    "bilstm": {"num_classes": 3, "hidden_sizes": (6,), "input_shape": (None, 3)},
    "charlm": {"num_classes": 11, "hidden_sizes": (6,), "embed_dim": 4},
    "tagger": {"vocab_size": 11, "num_classes": 3, "hidden_sizes": (6,), "embed_dim": 4},
}


@pytest.mark.parametrize("name", ["gru", "charlm", "tagger"])
def test_padding_values_change_neither_the_loss_nor_the_gradient(name):
    rng = np.random.default_rng(0)
    make_x, make_y = CASES[name]
    x, y = make_x(rng), make_y(rng)
    state = _state(name, x, **OPTIONS[name])
    mask = np.ones(4, bool)
    results = []
    for pad in (0, 7):
        targets = _padded(y, pad) if y.ndim == 2 else y  # a per-step target's padding too
        batch = Batch(jnp.asarray(_padded(x, pad)), jnp.asarray(targets), mask, LENGTHS)
        results.append(_loss_and_grads(state, batch))
    (loss_a, grads_a), (loss_b, grads_b) = results
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_a, grads_b
    )
    # And the lengths do matter: without them the padding is read as data.
    unmasked = Batch(jnp.asarray(_padded(x, 7)), jnp.asarray(y), mask, None)
    assert abs(float(_loss_and_grads(state, unmasked)[0]) - float(loss_a)) > 1e-4


@pytest.mark.parametrize("name", ["bilstm", "tagger"])
def test_a_batch_cut_to_its_longest_sequence_trains_as_the_padded_one(name):
    """What `--bucket-by-length` relies on: cutting a batch's padded steps (x, and a per-step
    target with it) changes neither the loss nor the gradient."""
    rng = np.random.default_rng(1)
    make_x, make_y = CASES[name]
    x, y = _padded(make_x(rng), 0), make_y(rng)
    x, y = np.concatenate([x, np.zeros_like(x)], 1), y  # 7 more steps of padding
    if y.ndim == 2:
        y = np.concatenate([_padded(y, 0), np.zeros_like(y)], 1)
    state = _state(name, x, **OPTIONS[name])
    mask = np.ones(4, bool)
    full = _loss_and_grads(state, Batch(x, y, mask, LENGTHS))
    steps = int(LENGTHS.max())
    cut = _loss_and_grads(
        state, Batch(x[:, :steps], y[:, :steps] if y.ndim == 2 else y, mask, LENGTHS)
    )
    np.testing.assert_allclose(full[0], cut[0], rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), *[full[1], cut[1]]
    )


@pytest.mark.parametrize("name", ["gru", "bilstm"])
def test_a_padded_batch_predicts_what_each_sequence_predicts_alone(name):
    rng = np.random.default_rng(1)
    x = CASES[name][0](rng)
    state = _state(name, x, **OPTIONS[name])
    batch = Batch(jnp.asarray(_padded(x, 3.0)), jnp.zeros(4, jnp.int32), np.ones(4, bool), LENGTHS)
    predictions, _ = eval_step(state, batch)
    variables = {"params": state.params}
    for i, length in enumerate(LENGTHS):
        alone = state.apply_fn(variables, x[i : i + 1, :length])
        assert int(predictions[i]) == int(jnp.argmax(alone, -1)[0])
        padded = state.apply_fn(variables, batch.x[i : i + 1], LENGTHS[i : i + 1])
        np.testing.assert_allclose(padded, alone, rtol=1e-5, atol=1e-6)
