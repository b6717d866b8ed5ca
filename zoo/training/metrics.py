"""Evaluation: `evaluate` over a whole split, classification metrics in JAX (confusion
matrix, accuracy, macro-F1), and the mean image's reconstruction error, the baseline of the
reconstruction tasks.

The metric functions take integer `labels` and `predictions` of shape `(N,)` and an optional
boolean `mask` that excludes padding rows; all are jittable (the class count is static).
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zoo import data
from zoo.data.splits import Split
from zoo.training import parallel as parallel_lib
from zoo.training.parallel import DataParallel, InFlight, fetch_replicated, prefetch
from zoo.training.state import TrainState
from zoo.training.steps import summarize_metrics


def confusion_matrix(
    labels: jax.Array, predictions: jax.Array, num_classes: int, mask: jax.Array | None = None
) -> jax.Array:
    """`(num_classes, num_classes)` int32 counts; row = true class, column = predicted class."""
    labels, predictions = jnp.asarray(labels), jnp.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ValueError(
            f"labels and predictions must both be (N,), got {labels.shape} and {predictions.shape}"
        )
    weights = jnp.ones(labels.shape, jnp.int32) if mask is None else jnp.asarray(mask, jnp.int32)
    flat = labels * num_classes + predictions
    counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[flat].add(weights, mode="drop")
    return counts.reshape(num_classes, num_classes)


def accuracy_from_confusion(confusion: jax.Array) -> jax.Array:
    return jnp.trace(confusion) / jnp.maximum(confusion.sum(), 1)


def macro_f1_from_confusion(confusion: jax.Array) -> jax.Array:
    """Unweighted mean of per-class F1 = 2TP / (2TP + FP + FN).

    As in scikit-learn's `f1_score(average="macro")`, classes that appear neither in the labels nor
    in the predictions are left out of the mean.
    """
    true_positive = jnp.diag(confusion)
    denominator = confusion.sum(axis=0) + confusion.sum(axis=1)  # = 2TP + FP + FN
    present = denominator > 0
    f1 = jnp.where(present, 2 * true_positive / jnp.maximum(denominator, 1), 0.0)
    return f1.sum() / jnp.maximum(present.sum(), 1)


def accuracy(labels: jax.Array, predictions: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Fraction of (unmasked) predictions equal to their label."""
    correct = jnp.asarray(labels) == jnp.asarray(predictions)
    weights = jnp.ones(correct.shape) if mask is None else jnp.asarray(mask, jnp.float32)
    return (correct * weights).sum() / jnp.maximum(weights.sum(), 1)


def macro_f1(
    labels: jax.Array, predictions: jax.Array, num_classes: int, mask: jax.Array | None = None
) -> jax.Array:
    return macro_f1_from_confusion(confusion_matrix(labels, predictions, num_classes, mask))


def evaluate(
    state: TrainState,
    split: Split,
    batch_size: int,
    num_classes: int,
    layout: DataParallel | None = None,
) -> dict[str, Any]:
    """Metrics of `state` on every example of `split`, by task.

    'classify': loss, accuracy, macro_f1, confusion_matrix; 'tag': loss and accuracy per valid
    step; 'language': loss (nats per token), accuracy and bpc (bits per character); 'regress'
    and 'reconstruct': loss, the mean squared error (per target value or pixel); 'vae': loss
    (the negative ELBO), elbo, its kl and reconstruction (`-log p(x|z)`) terms, in nats per
    example, and the pixels' mse. 'seq2seq':
    loss and accuracy per target token (EOS included, the PAD after it not), and exact_match,
    the fraction of sequences whose greedy decoding is the target up to and including EOS.

    `layout`: how `state` lies on devices (default: one device).
    """
    layout = layout or parallel_lib.create("none")
    predictions, sums = [], []
    batches = data.batches(split, batch_size, remainder="pad", shard=layout.shard())
    in_flight = InFlight()
    for batch in prefetch(batches, layout.put_batch):
        batch_predictions, batch_sums = layout.eval_step(state, batch)
        predictions.append(batch_predictions)
        sums.append(batch_sums)
        in_flight.add(batch_sums)
    summary = summarize_metrics(sums)
    if state.task in ("regress", "reconstruct"):
        return {"loss": summary["loss"], "mse": summary["loss"]}
    if state.task == "vae":
        return summary | {"elbo": -summary["loss"]}
    if state.task == "language":
        return summary | {"bpc": summary["loss"] / math.log(2)}
    if state.task == "tag":
        return summary
    predictions = np.concatenate(fetch_replicated(predictions))[: len(split.y)]
    if state.task == "seq2seq":
        return summary | {"exact_match": exact_match(split.y, predictions)}
    confusion = np.asarray(confusion_matrix(split.y, predictions, num_classes))
    return {
        "loss": summary["loss"],
        "accuracy": float(accuracy_from_confusion(confusion)),
        "macro_f1": float(macro_f1_from_confusion(confusion)),
        "confusion_matrix": confusion.tolist(),
    }


def exact_match(targets: np.ndarray, decoded: np.ndarray) -> float:
    """The fraction of rows of `decoded` `(N, T)` equal to `targets` `(N, T)` at every step:
    both hold PAD after EOS, so a row matches when its tokens up to and including EOS do."""
    targets, decoded = np.asarray(targets), np.asarray(decoded)
    if targets.shape != decoded.shape:
        raise ValueError(f"targets {targets.shape} and decoded {decoded.shape} must match")
    return float(np.mean(np.all(targets == decoded, axis=1))) if len(targets) else 0.0


def majority_tag_accuracy(train: Split, test: Split) -> float:
    """The accuracy on `test`'s valid steps of tagging every step with the tag most frequent in
    `train`: what a tagger that ignores its input reaches at best (on `train`)."""

    def valid_tags(split: Split) -> np.ndarray:
        y = np.asarray(split.y)
        if split.lengths is None:
            return y.ravel()
        return y[np.arange(y.shape[1])[None, :] < np.asarray(split.lengths)[:, None]]

    train_tags, test_tags = valid_tags(train), valid_tags(test)
    if not train_tags.size or not test_tags.size:
        return 0.0
    return float(np.mean(test_tags == np.bincount(train_tags).argmax()))


def mean_image_mse(train: Split, test: Split, chunk: int = 1024) -> float:
    """The mean squared error per pixel of `test`'s inputs against the mean of `train`'s: what a
    model that ignores its input reconstructs at best. Read `chunk` examples at a time (an image
    folder decodes them as they are read)."""

    def chunks(split: Split):
        n = len(split.x)
        for start in range(0, n, chunk):
            yield np.asarray(split.x[np.arange(start, min(start + chunk, n))], np.float64)

    mean = sum(rows.sum(axis=0) for rows in chunks(train)) / max(len(train.x), 1)
    squared = sum(float(np.square(rows - mean).sum()) for rows in chunks(test))
    return squared / max(len(test.x) * mean.size, 1)
