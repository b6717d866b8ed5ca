"""Classification metrics in JAX: confusion matrix, accuracy, macro-F1.

All take integer `labels` and `predictions` of shape `(N,)` and an optional boolean `mask` that
excludes padding rows; all are jittable (the class count is static).
"""

import jax
import jax.numpy as jnp


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
