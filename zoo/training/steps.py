"""The pure, jittable pieces of a training step: loss, train step, eval step.

The loss follows the state's static `task`: softmax cross-entropy over classes ('classify', outputs
`(B, K)`), over tags or the vocabulary at every valid step ('tag', `(B, T, K)`; 'language',
`(B, T, V)`; 'seq2seq', teacher-forced `(B, T, V)` over the target's tokens up to EOS), mean
squared error ('regress', `(B, D)`; 'reconstruct', the input's pixels `(B, H, W, C)`), or a
VAE's negative ELBO ('vae', `VAEOutput`). Metrics are sums, so batches add up exactly and
padding rows (mask False) count for nothing.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from zoo import runtime
from zoo.data.augment import augment
from zoo.data.batching import Batch
from zoo.models import kl_divergence
from zoo.models.seq2seq import PAD, cut_at_eos
from zoo.training.precision import MIN_SCALE, unscale, update_loss_scale
from zoo.training.regularizers import Params, penalty
from zoo.training.state import TrainState

Metrics = dict[str, jax.Array]

# Bernoulli means are clipped this far from 0 and 1 in the log-likelihood (Keras' epsilon), so a
# saturated pixel costs at most -log(1e-7) = 16 nats instead of an infinite loss.
_EPSILON = 1e-7
# The fold_in datum of the VAE's evaluation noise: no train step's key folds it in.
_EVAL_NOISE = 2**32 - 1


def _variables(params: Params, batch_stats: Any) -> dict[str, Any]:
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def _row_weights(mask: jax.Array, like: jax.Array) -> jax.Array:
    """The `(B,)` row mask broadcast to per-row or per-token values `like`."""
    mask = mask.astype(like.dtype).reshape(mask.shape + (1,) * (like.ndim - 1))
    return jnp.broadcast_to(mask, like.shape)


def compute_metrics(task: str, outputs: Any, batch: Batch) -> Metrics:
    """Summed loss (and correct predictions, or a VAE's ELBO terms) over the unmasked rows, with
    their count; in float32 whatever the outputs' dtype. `outputs` is the model's: an array, or
    a VAE's `VAEOutput`."""
    outputs = jax.tree.map(lambda o: o.astype(jnp.float32), outputs)
    if task in ("regress", "reconstruct"):
        target = batch.y if task == "regress" else batch.x
        errors = _mean_per_row(jnp.square(outputs - target))  # (B,)
        weights = _row_weights(batch.mask, errors)
        return {"loss_sum": jnp.sum(errors * weights), "count": jnp.sum(weights)}
    if task == "vae":
        return _vae_metrics(outputs, batch)
    if task == "seq2seq":
        return _seq2seq_metrics(outputs, batch)
    weights = _row_weights(batch.mask, batch.y.astype(jnp.float32))  # (B,) or (B, T)
    if batch.y.ndim == 2 and batch.lengths is not None:  # per-step outputs: padded steps count 0
        steps = jnp.arange(batch.y.shape[1])[None, :] < batch.lengths[:, None]
        weights = weights * steps.astype(weights.dtype)
    labels = jnp.where(weights > 0, batch.y, 0)  # a padded step's target may be anything
    losses = optax.softmax_cross_entropy_with_integer_labels(outputs, labels)
    correct = jnp.argmax(outputs, axis=-1) == labels
    return {
        "loss_sum": jnp.sum(losses * weights),
        "correct": jnp.sum(correct * weights),
        "count": jnp.sum(weights),
    }


def _seq2seq_metrics(logits: jax.Array, batch: Batch) -> Metrics:
    """Cross-entropy and correct tokens of teacher-forced logits `(B, T, V)` over the target's
    real tokens: EOS counts, the PAD after it does not (`lengths` are the sources')."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch.y)  # (B, T)
    weights = _row_weights(batch.mask, losses) * (batch.y != PAD).astype(losses.dtype)
    correct = jnp.argmax(logits, axis=-1) == batch.y
    return {
        "loss_sum": jnp.sum(losses * weights),
        "correct": jnp.sum(correct * weights),
        "count": jnp.sum(weights),
    }


def _mean_per_row(values: jax.Array) -> jax.Array:
    return jnp.mean(values.reshape(values.shape[0], -1), axis=-1)


def bernoulli_nll(x: jax.Array, probabilities: jax.Array) -> jax.Array:
    """`-log p(x)` in nats of pixels `x` in [0, 1] under independent Bernoulli `probabilities`
    (the binary cross-entropy; pixels between 0 and 1 are read as soft labels), summed over every
    axis but the first: `(B, ...)` -> `(B,)`."""
    p = jnp.clip(probabilities, _EPSILON, 1.0 - _EPSILON)
    log_likelihood = x * jnp.log(p) + (1.0 - x) * jnp.log1p(-p)
    return -jnp.sum(log_likelihood.reshape(x.shape[0], -1), axis=-1)


def _vae_metrics(outputs, batch: Batch) -> Metrics:
    """The negative ELBO per example, `reconstruction + kl` with `reconstruction = -log p(x|z)`
    at the decoded `z ~ q(z|x)` (one sample, the reparameterised estimate of its expectation)
    and the closed-form `kl = KL(q(z|x) || N(0, I))`, in nats; and the pixels' mean squared
    error."""
    reconstruction, mean, logvar = outputs  # (B, H, W, C), (B, latent), (B, latent)
    x = batch.x.astype(jnp.float32)
    nll = bernoulli_nll(x, reconstruction)  # (B,)
    kl = kl_divergence(mean, logvar)  # (B,)
    weights = _row_weights(batch.mask, nll)
    return {
        "loss_sum": jnp.sum((nll + kl) * weights),
        "reconstruction_sum": jnp.sum(nll * weights),
        "kl_sum": jnp.sum(kl * weights),
        "mse_sum": jnp.sum(_mean_per_row(jnp.square(reconstruction - x)) * weights),
        "count": jnp.sum(weights),
    }


def _targets(task: str, batch: Batch) -> dict[str, jax.Array]:
    """The model's keyword inputs: a seq2seq model reads its targets shifted right (teacher
    forcing)."""
    return {"targets": batch.y} if task == "seq2seq" else {}


def _inputs(batch: Batch) -> tuple[jax.Array, ...]:
    """The model's positional inputs: `x`, and the sequences' `lengths` where there are some."""
    return (batch.x,) if batch.lengths is None else (batch.x, batch.lengths)


def loss_fn(
    params: Params, state: TrainState, batch: Batch, dropout_key: jax.Array
) -> tuple[jax.Array, tuple[Metrics, Any]]:
    """Training-mode mean loss plus the state's L1/L2 penalty; returns
    `(loss, (metric sums, new_batch_stats))`. The metric sums hold the data loss only."""
    variables = _variables(params, state.batch_stats)
    rngs = {"dropout": dropout_key}
    if state.task == "vae":  # z ~ q(z|x), reparameterised
        rngs["latent"] = jax.random.fold_in(dropout_key, 1)
    if state.batch_stats:
        outputs, updates = state.apply_fn(
            variables,
            *_inputs(batch),
            **_targets(state.task, batch),
            train=True,
            rngs=rngs,
            mutable=["batch_stats"],
        )
        new_batch_stats = updates["batch_stats"]
    else:
        outputs = state.apply_fn(
            variables, *_inputs(batch), **_targets(state.task, batch), train=True, rngs=rngs
        )
        new_batch_stats = state.batch_stats
    sums = compute_metrics(state.task, outputs, batch)
    loss = sums["loss_sum"] / jnp.maximum(sums["count"], 1)
    loss += penalty(params, state.l1, state.l2, state.regularize)
    return loss, (sums, new_batch_stats)


def train_step_fn(
    state: TrainState, batch: Batch, axis_name: str | None = None
) -> tuple[TrainState, Metrics]:
    """One step of gradient descent: augment the inputs, grad of `loss_fn`, optax update, new
    batch-norm stats. `train_step` is this function jitted (`zoo.runtime.jit`), the state
    donated.

    Under `jax.pmap` or `jax.shard_map` with `axis_name`, each device holds a shard of the
    batch: the loss, gradients and batch-norm statistics are averaged over the axis and the
    metric sums added up, so every device applies the global batch's update; dropout and
    augmentation keys also fold in the device index so shards draw different masks.

    With `state.dynamic_loss_scale` (float16) the loss is multiplied by `state.loss_scale`
    before differentiating and the gradients divided by it after (`zoo.training.precision`); a
    step that overflows halves the scale and counts as bad only once the scale is down to 1.

    A step whose loss or gradients are not finite changes nothing but the step and the counters
    `skipped_steps` and `bad_streak` (its metric sums are zero); once `bad_streak` reaches
    `state.max_bad_steps` every later step is skipped too, so the loop can stop the run with
    the weights of the last good step.
    """
    step_key = jax.random.fold_in(state.key, state.step)
    if axis_name is not None and jax.lax.axis_size(axis_name) > 1:  # one device: as without
        step_key = jax.random.fold_in(step_key, jax.lax.axis_index(axis_name))
    dropout_key, augment_key = jax.random.split(step_key)
    if state.augment:
        batch = batch._replace(x=augment(augment_key, batch.x, state.augment))
    grad_fn = jax.value_and_grad(_scaled_loss_fn, has_aux=True)
    with runtime.hand_written_gradients():  # reverse mode only here: the CPU layers' fast paths
        (_, (loss, sums, batch_stats)), grads = grad_fn(state.params, state, batch, dropout_key)
    if state.dynamic_loss_scale:
        grads = unscale(grads, state.loss_scale)
    if axis_name is not None:  # equal shards: the mean of shard means is the global mean
        loss, grads, batch_stats = jax.lax.pmean((loss, grads, batch_stats), axis_name)
        sums = jax.lax.psum(sums, axis_name)
    finite = jnp.isfinite(loss) & jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
    )
    good = finite & (state.bad_streak < state.max_bad_steps)
    updated = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    loss_scale, counts = state.loss_scale, True
    if state.dynamic_loss_scale:
        # A float16 overflow while the scale can still shrink is the scaling at work, not a bad
        # step.
        counts = ~finite & (state.loss_scale.scale <= MIN_SCALE)
        loss_scale = update_loss_scale(state.loss_scale, finite)

    def keep_if_good(new, old):
        return jax.tree.map(lambda a, b: jnp.where(good, a, b), new, old)

    state = updated.replace(
        params=keep_if_good(updated.params, state.params),
        opt_state=keep_if_good(updated.opt_state, state.opt_state),
        batch_stats=keep_if_good(updated.batch_stats, state.batch_stats),
        skipped_steps=state.skipped_steps + (~good).astype(jnp.int32),
        bad_streak=jnp.where(good, 0, state.bad_streak + jnp.asarray(counts, jnp.int32)),
        loss_scale=loss_scale,
    )
    return state, jax.tree.map(lambda v: jnp.where(good, v, jnp.zeros_like(v)), sums)


def _scaled_loss_fn(params, state, batch, dropout_key):
    """`loss_fn` times the state's loss scale (float16 training), the loss itself kept aside."""
    loss, (sums, batch_stats) = loss_fn(params, state, batch, dropout_key)
    scaled = loss * state.loss_scale.scale if state.dynamic_loss_scale else loss
    return scaled, (loss, sums, batch_stats)


train_step = runtime.jit(train_step_fn, donate_argnums=0)


def eval_step_fn(
    state: TrainState, batch: Batch, axis_name: str | None = None
) -> tuple[jax.Array | None, Metrics]:
    """Evaluation mode (no dropout, running BN stats): class predictions `(B,)` when classifying,
    a seq2seq model's greedy decoding `(B, T)` (PAD after EOS), else None; and summed metrics.
    `eval_step` is this function jitted (`zoo.runtime.jit`).

    A VAE's ELBO is estimated at one `z ~ q(z|x)` per example, drawn from the same key at every
    evaluation (folded from the state's), so validation epochs compare on the same noise.

    Under `jax.pmap` or `jax.shard_map` with `axis_name`, the predictions are gathered and the
    sums added up over the axis, so every device returns those of the global batch.
    """
    variables = _variables(state.params, state.batch_stats)
    rngs = {"latent": jax.random.fold_in(state.key, _EVAL_NOISE)} if state.task == "vae" else {}
    outputs = state.apply_fn(
        variables, *_inputs(batch), **_targets(state.task, batch), train=False, rngs=rngs
    )
    predictions = jnp.argmax(outputs, axis=-1) if state.task == "classify" else None
    if state.task == "seq2seq":  # and greedy decoding, without the targets, for exact match
        decoded = state.apply_fn(variables, *_inputs(batch), max_length=batch.y.shape[1])
        predictions = cut_at_eos(jnp.argmax(decoded, axis=-1))
    sums = compute_metrics(state.task, outputs, batch)
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
        if predictions is not None:
            predictions = jax.lax.all_gather(predictions, axis_name, tiled=True)
    return predictions, sums


eval_step = runtime.jit(eval_step_fn)


def summarize_metrics(step_metrics: list[Metrics]) -> dict[str, float]:
    """Mean loss (and accuracy, when counted, and the mean of every other `NAME_sum` as `NAME`)
    over a list of per-step metric sums; one host sync.

    Raises:
      ValueError: for an empty list (an empty split has no mean loss; skip evaluating it).
    """
    if not step_metrics:
        raise ValueError("no step metrics to summarize: the evaluated split has no examples")
    totals = jax.tree.map(lambda *xs: sum(xs), *jax.device_get(step_metrics))
    count = max(float(totals["count"]), 1.0)
    summary = {"loss": float(totals["loss_sum"]) / count}
    if "correct" in totals:
        summary["accuracy"] = float(totals["correct"]) / count
    for name, total in totals.items():
        if name.endswith("_sum") and name != "loss_sum":
            summary[name.removesuffix("_sum")] = float(total) / count
    return summary
