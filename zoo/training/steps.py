"""The pure, jittable pieces of a training step: loss, train step, eval step."""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from zoo.data.batching import Batch
from zoo.training.state import Params, TrainState

Metrics = dict[str, jax.Array]


def _variables(params: Params, batch_stats: Any) -> dict[str, Any]:
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the unmasked rows. logits `(B, K)`, labels/mask `(B,)`."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # (B,)
    return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1)


def loss_fn(
    params: Params, state: TrainState, batch: Batch, dropout_key: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, Any]]:
    """Training-mode loss; returns `(loss, (logits, new_batch_stats))`."""
    variables = _variables(params, state.batch_stats)
    if state.batch_stats:
        logits, updates = state.apply_fn(
            variables, batch.x, train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"]
        )
        new_batch_stats = updates["batch_stats"]
    else:
        logits = state.apply_fn(variables, batch.x, train=True, rngs={"dropout": dropout_key})
        new_batch_stats = state.batch_stats
    return cross_entropy(logits, batch.y, batch.mask), (logits, new_batch_stats)


def compute_metrics(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> Metrics:
    """Summed loss, correct count and example count, so batches can be added up exactly."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = jnp.argmax(logits, axis=-1) == labels
    return {
        "loss_sum": jnp.sum(losses * mask),
        "correct": jnp.sum(correct * mask),
        "count": jnp.sum(mask).astype(jnp.float32),
    }


@functools.partial(jax.jit, donate_argnums=0)
def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    """One step of gradient descent: grad of `loss_fn`, optax update, new batch-norm stats."""
    dropout_key = jax.random.fold_in(state.key, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (logits, batch_stats)), grads = grad_fn(state.params, state, batch, dropout_key)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, compute_metrics(logits, batch.y, batch.mask)


@jax.jit
def eval_step(state: TrainState, batch: Batch) -> tuple[jax.Array, Metrics]:
    """Evaluation-mode predictions `(B,)` and summed metrics (no dropout, running BN stats)."""
    logits = state.apply_fn(_variables(state.params, state.batch_stats), batch.x, train=False)
    return jnp.argmax(logits, axis=-1), compute_metrics(logits, batch.y, batch.mask)
