"""Sequence data: padding ragged lists, and the bundled digits read as sequences."""

from collections.abc import Sequence
from typing import Literal

import numpy as np

from zoo.data.digits import load_digits, read_digits
from zoo.data.splits import Dataset, Split, map_splits, split_by_seed


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


def load_digits_moving(
    *,
    seed: int = 0,
    steps: int = 8,
    canvas: int = 16,
    max_speed: int = 2,
    validation: float = 0.1,
    test: float = 0.2,
) -> Dataset:
    """The 8x8 digits moving across a blank canvas: `(N, steps, canvas, canvas, 1)` clips.

    Each digit (its original 8x8 pixels scaled to [0, 1]) starts at a random place and moves in a
    straight line, a random whole number of pixels per frame along each axis (at most
    `max_speed`, never still on both), bouncing off the borders, so every frame holds the whole
    digit; the label is the digit. `seed` fixes the paths and the split, which is `load_digits`'
    (the same clips in each split as its images for the same seed).

    Args:
      seed: fixes the paths and the train/validation/test split.
      steps: frames per clip.
      canvas: side of the square frames; at least 8.
      max_speed: the largest step per frame along an axis, in pixels.
      validation: the fraction of the 1,797 clips held out for validation.
      test: the fraction held out for testing.
    """
    if canvas < 8:
        raise ValueError(f"canvas must be at least the digits' 8 pixels, got {canvas}")
    if steps < 1 or max_speed < 1:
        raise ValueError(f"steps and max_speed must be >= 1, got {steps} and {max_speed}")
    pixels, labels = read_digits()
    images = (pixels / 16.0).astype(np.float32)  # (N, 8, 8)
    rng = np.random.default_rng((seed, _PATHS))  # a stream apart from the split's
    corners = bouncing_paths(rng, len(images), steps, canvas - images.shape[1], max_speed)
    clips = place_on_canvas(images, corners, canvas)[..., None]  # (N, T, canvas, canvas, 1)
    train, val, test_split = split_by_seed(
        clips, labels.astype(np.int32), seed=seed, validation=validation, test=test
    )
    return Dataset(train, val, test_split, num_classes=10)


_PATHS = 1  # the second word of the paths' seed, so they do not reuse the split's random stream


def bouncing_paths(
    rng: np.random.Generator, count: int, steps: int, room: int, max_speed: int
) -> np.ndarray:
    """Top-left corners `(count, steps, 2)` of straight paths inside `[0, room]` per axis that
    bounce off its ends: a random start and a random velocity in `[-max_speed, max_speed]`
    pixels per frame per axis, not zero on both."""
    start = rng.integers(0, room + 1, (count, 2))
    velocity = rng.integers(-max_speed, max_speed + 1, (count, 2))
    still = ~velocity.any(axis=1)
    velocity[still] = rng.choice([-1, 1], (still.sum(), 2))  # every digit moves
    free = start[:, None, :] + velocity[:, None, :] * np.arange(steps)[None, :, None]
    if room == 0:
        return np.zeros_like(free)
    # Reflecting off both ends is a triangle wave of period 2 * room.
    return room - np.abs(np.mod(free, 2 * room) - room)


def place_on_canvas(images: np.ndarray, corners: np.ndarray, canvas: int) -> np.ndarray:
    """`(N, h, w)` images pasted with their top-left corners at `corners` `(N, T, 2)` on blank
    `(canvas, canvas)` frames: `(N, T, canvas, canvas)`."""
    count, height, width = images.shape
    frames = np.zeros((count, corners.shape[1], canvas, canvas), images.dtype)
    rows = corners[..., 0, None, None] + np.arange(height)[:, None]  # (N, T, h, 1)
    cols = corners[..., 1, None, None] + np.arange(width)[None, :]  # (N, T, 1, w)
    clip = np.arange(count)[:, None, None, None]
    step = np.arange(corners.shape[1])[None, :, None, None]
    frames[clip, step, rows, cols] = images[:, None]
    return frames
