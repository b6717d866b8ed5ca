"""Batch iteration: shuffled by (seed, epoch), with the last partial batch dropped, padded or kept.

The order of an epoch is a pure function of `(seed, epoch)`, so a run can be replayed (or resumed)
from any epoch without carrying iterator state.
"""

from collections.abc import Iterator
from typing import Literal, NamedTuple

import numpy as np

from zoo.data.splits import Split

Remainder = Literal["drop", "pad", "keep"]


class Batch(NamedTuple):
    """`x`: `(B, ...)`; `y`: `(B,)`; `mask`: `(B,)` bool, False on padding rows; `lengths`:
    `(B,)` valid steps of sequences padded at the end, or None."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray | None = None


def epoch_order(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
    """The permutation of `range(num_examples)` used for `epoch` of a run seeded with `seed`."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def num_batches(num_examples: int, batch_size: int, remainder: Remainder = "drop") -> int:
    full, rest = divmod(num_examples, batch_size)
    return full + (1 if rest and remainder != "drop" else 0)


def batches(
    split: Split,
    batch_size: int,
    *,
    seed: int | None = None,
    epoch: int = 0,
    remainder: Remainder = "drop",
    shard: tuple[int, int] = (0, 1),
) -> Iterator[Batch]:
    """Yields the batches of one pass over `split`.

    Args:
      split: the examples.
      batch_size: examples per batch.
      seed: shuffles by `epoch_order(seed, epoch)`; None keeps the stored order.
      epoch: selects the shuffle of this epoch.
      remainder: the last partial batch is dropped ('drop'), filled up to `batch_size` with
        copies of the first example whose `mask` is False ('pad', so every batch has one shape and
        a jitted step compiles once), or yielded short ('keep').
      shard: `(index, count)`: yield only the `index`-th of `count` equal row blocks of every
        batch (the rows one process of a multi-process run reads); `batch_size` must divide by
        `count`, and 'keep' is not allowed with `count > 1`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    index, count = shard
    if not 0 <= index < count or batch_size % count:
        raise ValueError(f"shard {shard} does not split batches of {batch_size} rows evenly")
    if count > 1 and remainder == "keep":
        raise ValueError("remainder='keep' gives a short batch that shards cannot split evenly")
    if remainder not in ("drop", "pad", "keep"):
        raise ValueError(f"remainder must be 'drop', 'pad' or 'keep', got {remainder!r}")
    n = len(split.x)
    order = np.arange(n) if seed is None else epoch_order(n, seed=seed, epoch=epoch)
    for start in range(0, num_batches(n, batch_size, remainder) * batch_size, batch_size):
        idx = order[start : start + batch_size]
        mask = np.ones(batch_size if remainder == "pad" else len(idx), dtype=bool)
        if remainder == "pad" and len(idx) < batch_size:
            mask[len(idx) :] = False
            idx = np.concatenate([idx, np.full(batch_size - len(idx), order[0])])
        rows = slice(index * len(idx) // count, (index + 1) * len(idx) // count)
        idx, mask = idx[rows], mask[rows]
        lengths = None if split.lengths is None else split.lengths[idx]
        yield Batch(split.x[idx], split.y[idx], mask, lengths)
