"""Sequence data: padding ragged lists, and the bundled digits read as sequences."""

from collections.abc import Sequence
from typing import Literal

import numpy as np

from zoo.data.digits import load_digits
from zoo.data.splits import Dataset, Split, map_splits


def pad_sequences(
    sequences: Sequence[Sequence],
    *,
    max_length: int | None = None,
    padding: Literal["post", "pre"] = "post",
    truncating: Literal["post", "pre"] = "post",
    value: float = 0,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Pads (or truncates) ragged sequences to one length, like Keras' `pad_sequences`.

    Args:
      sequences: N sequences, each of shape `(T_i, *features)` (or a list of scalars).
      max_length: output length; defaults to the longest sequence.
      padding: 'post' pads at the end (what `lengths` masking expects), 'pre' at the start
        (then pass `mask=np.arange(T) >= T - lengths` to the layers).
      truncating: 'post' drops the end of longer sequences, 'pre' their start.

    Returns:
      `(padded (N, T, *features), lengths (N,))`, lengths counted after truncation.
    """
    for name, choice in (("padding", padding), ("truncating", truncating)):
        if choice not in ("post", "pre"):
            raise ValueError(f"{name} must be 'post' or 'pre', got {choice!r}")
    arrays = [np.asarray(s, dtype=dtype) for s in sequences]
    if not arrays:
        raise ValueError("pad_sequences needs at least one sequence")
    feature_shape = arrays[0].shape[1:]
    for i, a in enumerate(arrays):
        if a.ndim == 0 or a.shape[1:] != feature_shape:
            raise ValueError(
                f"sequence {i} has shape {a.shape}; "
                f"every sequence must be (steps, *{feature_shape})"
            )
    if max_length is None:
        max_length = max(len(a) for a in arrays)
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    padded = np.full((len(arrays), max_length, *feature_shape), value, dtype=dtype)
    lengths = np.zeros(len(arrays), np.int32)
    for i, a in enumerate(arrays):
        a = a[:max_length] if truncating == "post" else a[max(len(a) - max_length, 0) :]
        lengths[i] = len(a)
        if padding == "post":
            padded[i, : len(a)] = a
        else:
            padded[i, max_length - len(a) :] = a
    return padded, lengths


def load_digits_sequences(*, seed: int = 0, image_size: int = 28) -> Dataset:
    """The digits read row by row: `(N, rows, columns)`, rows as timesteps."""
    dataset = load_digits(seed=seed, image_size=image_size)
    return map_splits(dataset, lambda split: Split(split.x[..., 0], split.y))


def load_digits_strips(*, seed: int = 0, strips: int = 4) -> Dataset:
    """The 28x28 digits cut into `strips` horizontal patches: `(N, strips, 28 // strips, 28, 1)`."""
    if 28 % strips:
        raise ValueError(f"strips must divide 28, got {strips}")
    dataset = load_digits(seed=seed, image_size=28)
    shape = (strips, 28 // strips, 28, 1)
    return map_splits(dataset, lambda split: Split(split.x.reshape(-1, *shape), split.y))
