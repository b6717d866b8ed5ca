"""Batch iteration: shuffled by (seed, epoch), with the last partial batch dropped, padded or kept.

The order of an epoch is a pure function of `(seed, epoch)`, so a run can be replayed (or resumed)
from any epoch without carrying iterator state. `epoch_plan` says which rows make each batch;
`read_batch` gathers one process's share of a planned batch; `batches` does both for a split.

Bucketing (`bucket=True`, for sequences with `lengths`): the epoch's shuffled rows are cut into
windows of `BUCKET_WINDOW` batches, each window sorted by length and cut into batches, and the
batches shuffled, so a batch holds sequences of similar length. Each batch is then cut to its
longest sequence, rounded up to a multiple of `BUCKET_STEPS` steps, so a jitted step compiles
once per such length instead of paying for the padded axis every time.
"""

from collections.abc import Iterator
from typing import Literal, NamedTuple

import numpy as np

from zoo.data.splits import Split

Remainder = Literal["drop", "pad", "keep"]
BUCKET_WINDOW = 16  # batches sorted together by length
BUCKET_STEPS = 8  # a bucketed batch's time axis is cut to a multiple of this


class Batch(NamedTuple):
    """`x`: `(B, ...)`; `y`: `(B,)`; `mask`: `(B,)` bool, False on padding rows; `lengths`:
    `(B,)` valid steps of sequences padded at the end, or None."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray | None = None


class PlannedBatch(NamedTuple):
    """`rows`: `(B,)` example indices of one global batch (padding rows repeat the epoch's first
    example); `mask`: `(B,)` bool, False on padding rows; `steps`: the time axis the batch is
    cut to, or None to keep the split's own."""

    rows: np.ndarray
    mask: np.ndarray
    steps: int | None = None


def epoch_order(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
    """The permutation of `range(num_examples)` used for `epoch` of a run seeded with `seed`."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def num_batches(num_examples: int, batch_size: int, remainder: Remainder = "drop") -> int:
    full, rest = divmod(num_examples, batch_size)
    return full + (1 if rest and remainder != "drop" else 0)


def epoch_plan(
    num_examples: int,
    batch_size: int,
    *,
    seed: int | None = None,
    epoch: int = 0,
    remainder: Remainder = "drop",
    lengths: np.ndarray | None = None,
    bucket: bool = False,
) -> list[PlannedBatch]:
    """The global batches of one pass over `num_examples` examples, in order.

    Args:
      num_examples: rows of the split.
      batch_size: examples per batch.
      seed: shuffles by `epoch_order(seed, epoch)`; None keeps the stored order.
      epoch: selects the shuffle of this epoch.
      remainder: the last partial batch is dropped ('drop'), filled up to `batch_size` with
        copies of the first example whose mask is False ('pad', so every batch has one shape and
        a jitted step compiles once), or kept short ('keep').
      lengths: `(num_examples,)` sequence lengths; needed by `bucket`.
      bucket: group rows of similar length into batches (see the module's docstring).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if remainder not in ("drop", "pad", "keep"):
        raise ValueError(f"remainder must be 'drop', 'pad' or 'keep', got {remainder!r}")
    if bucket and lengths is None:
        raise ValueError("bucketing by length needs the sequences' lengths")
    if seed is None:
        order = np.arange(num_examples)
    else:
        order = epoch_order(num_examples, seed=seed, epoch=epoch)
    size = num_batches(num_examples, batch_size, remainder) * batch_size
    chunks = [order[start : start + batch_size] for start in range(0, size, batch_size)]
    if bucket:
        chunks = _bucketed(order[:size], lengths, batch_size, seed, epoch)
    plan = []
    for rows in chunks:
        mask = np.ones(batch_size if remainder == "pad" else len(rows), dtype=bool)
        if len(rows) < len(mask):
            mask[len(rows) :] = False
            rows = np.concatenate([rows, np.full(len(mask) - len(rows), order[0])])
        steps = None
        if bucket:
            longest = int(lengths[rows[mask]].max(initial=1))
            steps = -(-longest // BUCKET_STEPS) * BUCKET_STEPS
        plan.append(PlannedBatch(rows, mask, steps))
    return plan


def read_batch(
    split: Split,
    planned: PlannedBatch,
    *,
    shard: tuple[int, int] = (0, 1),
    per_step_targets: bool = False,
) -> Batch:
    """The `shard[0]`-th of `shard[1]` equal row blocks of a planned batch, gathered from `split`.

    With `planned.steps`, the time axis of `x` (and of `y` with `per_step_targets`) is cut to
    that many steps, never past the split's own.
    """
    index, count = shard
    rows = slice(index * len(planned.rows) // count, (index + 1) * len(planned.rows) // count)
    idx, mask = planned.rows[rows], planned.mask[rows]
    x, y = split.x[idx], split.y[idx]
    lengths = None if split.lengths is None else split.lengths[idx]
    if planned.steps is not None and planned.steps < x.shape[1]:
        x = x[:, : planned.steps]
        if per_step_targets:
            y = y[:, : planned.steps]
    return Batch(x, y, mask, lengths)


def check_shard(batch_size: int, remainder: Remainder, shard: tuple[int, int]) -> None:
    index, count = shard
    if not 0 <= index < count or batch_size % count:
        raise ValueError(f"shard {shard} does not split batches of {batch_size} rows evenly")
    if count > 1 and remainder == "keep":
        raise ValueError("remainder='keep' gives a short batch that shards cannot split evenly")


def batches(
    split: Split,
    batch_size: int,
    *,
    seed: int | None = None,
    epoch: int = 0,
    remainder: Remainder = "drop",
    shard: tuple[int, int] = (0, 1),
    bucket: bool = False,
    per_step_targets: bool = False,
) -> Iterator[Batch]:
    """Yields the batches of one pass over `split` (`epoch_plan`'s arguments).

    Args:
      shard: `(index, count)`: yield only the `index`-th of `count` equal row blocks of every
        batch (the rows one process of a multi-process run reads); `batch_size` must divide by
        `count`, and 'keep' is not allowed with `count > 1`.
      per_step_targets: `y` has a step axis that bucketing cuts with `x`'s (a tagger's).
    """
    check_shard(batch_size, remainder, shard)
    plan = epoch_plan(
        len(split.x),
        batch_size,
        seed=seed,
        epoch=epoch,
        remainder=remainder,
        lengths=split.lengths,
        bucket=bucket,
    )
    for planned in plan:
        yield read_batch(split, planned, shard=shard, per_step_targets=per_step_targets)


def _bucketed(
    rows: np.ndarray, lengths: np.ndarray, batch_size: int, seed: int | None, epoch: int
) -> list[np.ndarray]:
    """`rows` (already in the epoch's order) as batches of similar lengths, in shuffled order."""
    window = BUCKET_WINDOW * batch_size
    chunks = []
    for start in range(0, len(rows), window):
        part = rows[start : start + window]
        part = part[np.argsort(lengths[part], kind="stable")]
        chunks += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    if seed is not None:  # a stream apart from epoch_order's, so that order stays as it was
        shuffled = np.random.default_rng([seed, epoch, 1]).permutation(len(chunks))
        chunks = [chunks[i] for i in shuffled]
    return chunks
