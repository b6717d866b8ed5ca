import numpy as np
import pytest

from zoo.data import Split, batches, epoch_order, num_batches
from zoo.data.batching import BUCKET_STEPS, epoch_plan


def make_split(n: int) -> Split:
    return Split(np.arange(n, dtype=np.float32)[:, None] * 10, np.arange(n, dtype=np.int32))


@pytest.mark.parametrize(
    "n, size, remainder, expected_sizes",
    [
        (10, 4, "drop", [4, 4]),
        (10, 4, "keep", [4, 4, 2]),
        (10, 4, "pad", [4, 4, 4]),
        (8, 4, "pad", [4, 4]),
        (3, 5, "drop", []),
        (3, 5, "pad", [5]),
    ],
)
def test_remainder_modes(n, size, remainder, expected_sizes):
    out = list(batches(make_split(n), size, seed=1, remainder=remainder))
    assert [len(b.y) for b in out] == expected_sizes
    assert num_batches(n, size, remainder) == len(expected_sizes)
    real = np.concatenate([b.y[b.mask] for b in out]) if out else np.array([])
    assert len(real) == (n if remainder != "drop" else n // size * size)
    assert len(set(real.tolist())) == len(real)  # no example twice in one epoch
    for b in out:
        np.testing.assert_array_equal(b.x[:, 0], b.y * 10)  # x and y stay paired


def test_padding_rows_are_masked_and_valid_examples():
    out = list(batches(make_split(5), 4, remainder="pad"))
    np.testing.assert_array_equal(out[-1].mask, [True, False, False, False])
    assert out[-1].y[1:].tolist() == [0, 0, 0]


def test_order_is_a_pure_function_of_seed_and_epoch():
    split = make_split(50)
    first = [b.y for b in batches(split, 10, seed=3, epoch=2)]
    again = [b.y for b in batches(split, 10, seed=3, epoch=2)]
    np.testing.assert_array_equal(first, again)
    other_epoch = np.concatenate([b.y for b in batches(split, 10, seed=3, epoch=3)])
    assert not np.array_equal(np.concatenate(first), other_epoch)
    np.testing.assert_array_equal(np.concatenate(first), epoch_order(50, seed=3, epoch=2))
    unshuffled = np.concatenate([b.y for b in batches(split, 10)])
    np.testing.assert_array_equal(unshuffled, np.arange(50))


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(batches(make_split(3), 0))
    with pytest.raises(ValueError, match="remainder must be"):
        next(batches(make_split(3), 2, remainder="wrap"))


@pytest.mark.parametrize("remainder", ["drop", "pad"])
def test_shards_are_the_row_blocks_of_every_global_batch(remainder):
    split = make_split(23)
    whole = list(batches(split, 6, seed=4, remainder=remainder))
    shards = [list(batches(split, 6, seed=4, remainder=remainder, shard=(i, 3))) for i in range(3)]
    assert all(len(s) == len(whole) for s in shards)
    for step, batch in enumerate(whole):
        for field in ("x", "y", "mask"):
            blocks = [getattr(s[step], field) for s in shards]
            assert all(len(block) == 2 for block in blocks)
            np.testing.assert_array_equal(np.concatenate(blocks), getattr(batch, field))


def test_shards_must_split_batches_evenly():
    with pytest.raises(ValueError, match=r"shard \(0, 4\) does not split batches of 6 rows"):
        next(batches(make_split(10), 6, shard=(0, 4)))
    with pytest.raises(ValueError, match=r"shard \(2, 2\)"):
        next(batches(make_split(10), 6, shard=(2, 2)))
    with pytest.raises(ValueError, match="remainder='keep'"):
        next(batches(make_split(10), 6, remainder="keep", shard=(0, 2)))


def ragged_split(n: int, steps: int = 40, seed: int = 0) -> Split:
    """Sequences of lengths 1..steps padded to `steps`: x counts 1, 2, ... then zeros."""
    lengths = np.random.default_rng(seed).integers(1, steps + 1, n).astype(np.int32)
    x = np.where(np.arange(steps)[None, :] < lengths[:, None], np.arange(1, steps + 1), 0)
    return Split(x.astype(np.float32), np.arange(n, dtype=np.int32), lengths)


def test_bucketed_epochs_hold_the_same_examples_in_batches_of_similar_length():
    split = ragged_split(400)
    plain = epoch_plan(400, 16, seed=2, epoch=1, lengths=split.lengths)
    plan = epoch_plan(400, 16, seed=2, epoch=1, lengths=split.lengths, bucket=True)
    assert len(plan) == len(plain) == 25
    rows = np.concatenate([p.rows for p in plan])
    np.testing.assert_array_equal(np.sort(rows), np.sort(np.concatenate([p.rows for p in plain])))

    def spread(plan):  # mean of max - min length within a batch
        return np.mean([np.ptp(split.lengths[p.rows]) for p in plan])

    assert spread(plan) < spread(plain) / 4
    for p in plan:
        longest = split.lengths[p.rows].max()
        assert p.steps % BUCKET_STEPS == 0 and longest <= p.steps < longest + BUCKET_STEPS
    again = epoch_plan(400, 16, seed=2, epoch=1, lengths=split.lengths, bucket=True)
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(plan, again, strict=True))
    other = epoch_plan(400, 16, seed=2, epoch=2, lengths=split.lengths, bucket=True)
    assert not all(np.array_equal(a.rows, b.rows) for a, b in zip(plan, other, strict=True))


def test_bucketed_batches_are_cut_to_their_longest_sequence_never_past_the_data():
    split = ragged_split(64, steps=20)
    tags = Split(split.x, split.x.astype(np.int32), split.lengths)  # a tag per step
    for batch, planned in zip(
        batches(tags, 8, seed=0, bucket=True, per_step_targets=True),
        epoch_plan(64, 8, seed=0, lengths=split.lengths, bucket=True),
        strict=True,
    ):
        steps = min(planned.steps, 20)
        assert batch.x.shape == batch.y.shape == (8, steps)
        np.testing.assert_array_equal(batch.x, split.x[planned.rows, :steps])
        assert batch.lengths.max() <= steps  # nothing but padding was cut
    cut = next(batches(split, 8, seed=0, bucket=True))  # a class per sequence: y stays
    assert cut.y.shape == (8,)


def test_bucketing_needs_lengths():
    with pytest.raises(ValueError, match="needs the sequences' lengths"):
        epoch_plan(10, 2, seed=0, bucket=True)
