"""Optimizers and schedules from the config, checked against optax's own and NumPy formulas."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo.training import TrainConfig, create_optimizer
from zoo.training.state import create_schedule

STEPS_PER_EPOCH, EPOCHS, LR = 7, 3, 0.1
TOTAL = STEPS_PER_EPOCH * EPOCHS


def _params():
    keys = jax.random.split(jax.random.key(0), 3)
    return {
        "dense": {"kernel": jax.random.normal(keys[0], (3, 4)), "bias": jnp.ones(4)},
        "norm": {"scale": jnp.full(4, 2.0)},
        "lstm": {"recurrent_kernel": jax.random.normal(keys[1], (4, 8))},
    }


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ("constant", lambda t: LR),
        ("cosine", lambda t: LR * 0.5 * (1 + math.cos(math.pi * t / TOTAL))),
        ("exponential", lambda t: LR * 0.5 ** (t / STEPS_PER_EPOCH)),
        (
            "warmup_cosine",
            lambda t: (
                LR * t / 5 if t < 5 else LR * 0.5 * (1 + math.cos(math.pi * (t - 5) / (TOTAL - 5)))
            ),
        ),
    ],
)
def test_schedules_follow_their_formulas(schedule, expected):
    config = TrainConfig(
        learning_rate=LR,
        epochs=EPOCHS,
        schedule=schedule,
        decay_rate=0.5,
        warmup_steps=5 if schedule == "warmup_cosine" else 0,
    )
    fn = create_schedule(config, STEPS_PER_EPOCH)
    for t in (0, 1, 4, 5, 6, 13, TOTAL - 1, TOTAL):
        assert float(fn(t)) == pytest.approx(expected(t), rel=1e-5, abs=1e-8), t


def _run(tx, params, grads_per_step):
    state = tx.init(params)
    for grads in grads_per_step:
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def _grads(seed):
    return jax.tree.map(lambda p: jax.random.normal(jax.random.key(seed), p.shape), _params())


def test_adamw_is_optax_adamw_with_the_kernel_mask():
    config = TrainConfig(optimizer="adamw", learning_rate=LR, weight_decay=0.3)
    grads = [_grads(s) for s in range(3)]
    ours = _run(create_optimizer(config), _params(), grads)
    mask = {
        "dense": {"kernel": True, "bias": False},
        "norm": {"scale": False},
        "lstm": {"recurrent_kernel": True},
    }
    reference = _run(optax.adamw(LR, weight_decay=0.3, mask=mask), _params(), grads)
    chex.assert_trees_all_close(ours, reference, rtol=1e-6)


@pytest.mark.parametrize("regularize", ["kernels", "all"])
def test_weight_decay_leaves_biases_and_scales_alone_by_default(regularize):
    config = TrainConfig(
        optimizer="sgd", momentum=0.0, learning_rate=LR, weight_decay=0.5, regularize=regularize
    )
    zero = jax.tree.map(jnp.zeros_like, _params())
    after = _run(create_optimizer(config), _params(), [zero])
    before = _params()
    shrink = 1 - LR * 0.5  # w -= lr * decay * w
    for path in (("dense", "kernel"), ("lstm", "recurrent_kernel")):
        np.testing.assert_allclose(
            after[path[0]][path[1]], before[path[0]][path[1]] * shrink, rtol=1e-6
        )
    factor = shrink if regularize == "all" else 1.0
    np.testing.assert_allclose(after["dense"]["bias"], before["dense"]["bias"] * factor)
    np.testing.assert_allclose(after["norm"]["scale"], before["norm"]["scale"] * factor)


def test_sgd_nesterov_matches_the_numpy_recurrence():
    config = TrainConfig(optimizer="sgd", learning_rate=LR, momentum=0.9, nesterov=True)
    grads = [_grads(s) for s in range(4)]
    ours = _run(create_optimizer(config), _params(), grads)
    w = np.asarray(_params()["dense"]["kernel"], np.float64)
    velocity = np.zeros_like(w)
    for g in grads:
        g = np.asarray(g["dense"]["kernel"], np.float64)
        velocity = 0.9 * velocity + g
        w = w - LR * (g + 0.9 * velocity)
    np.testing.assert_allclose(ours["dense"]["kernel"], w, rtol=1e-5)


def test_clipping_scales_the_global_norm_down():
    config = TrainConfig(optimizer="sgd", momentum=0.0, learning_rate=1.0, clip_norm=0.5)
    grads = _grads(1)
    norm = math.sqrt(sum(float(np.sum(np.square(g))) for g in jax.tree.leaves(grads)))
    assert norm > 0.5
    after = _run(create_optimizer(config), _params(), [grads])
    expected = jax.tree.map(lambda p, g: p - g * 0.5 / norm, _params(), grads)
    chex.assert_trees_all_close(after, expected, rtol=1e-5)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "rmsprop"])
def test_every_optimizer_descends_a_quadratic(optimizer):
    config = TrainConfig(optimizer=optimizer, learning_rate=0.05, schedule="cosine", epochs=1)
    tx = create_optimizer(config, steps_per_epoch=100)
    target = jnp.arange(3.0)
    params = {"kernel": jnp.zeros(3)}
    loss = lambda p: jnp.sum((p["kernel"] - target) ** 2)  # noqa: E731
    state = tx.init(params)
    for _ in range(100):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    assert float(loss(params)) < 0.05 * float(loss({"kernel": jnp.zeros(3)}))


def test_warmup_longer_than_the_run_is_rejected():
    config = TrainConfig(epochs=1, schedule="warmup_cosine", warmup_steps=50)
    with pytest.raises(ValueError, match="warmup_steps 50 must be fewer than the run's 10 steps"):
        create_optimizer(config, steps_per_epoch=10)
