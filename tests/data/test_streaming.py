"""A run's stream of training batches: a pure function of the step, read in the loop's process or
by grain's worker processes."""

import pickle

import numpy as np
import pytest
from test_batching import ragged_split

from zoo.data import Split, batches
from zoo.data.streaming import BatchStream, StepReader


def expected(split, batch_size, seed, epochs, **options):
    """The batches of `epochs` epochs, one epoch at a time, as `batches` gives them."""
    return [
        batch
        for epoch in range(epochs)
        for batch in batches(split, batch_size, seed=seed, epoch=epoch, **options)
    ]


def assert_same_batches(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        for name in ("x", "y", "mask", "lengths"):
            left, right = getattr(a, name), getattr(b, name)
            assert (left is None) == (right is None), name
            if left is not None:
                assert left.dtype == right.dtype, name
                np.testing.assert_array_equal(left, right, err_msg=name)


@pytest.mark.parametrize(
    "options", [{}, {"shard": (1, 2)}, {"bucket": True}, {"bucket": True, "shard": (0, 2)}]
)
def test_a_stream_from_any_step_reads_each_epochs_batches(options):
    split = ragged_split(100, steps=24)
    steps = 100 // 8
    reader = StepReader(split, 8, seed=5, steps_per_epoch=steps, **options)
    want = expected(split, 8, 5, 3, **options)
    for first in (0, 7, steps, 2 * steps + 3):  # resuming mid-epoch starts mid-stream
        with BatchStream(reader, first, 3 * steps) as stream:
            assert_same_batches(list(stream), want[first:])


@pytest.mark.slow
def test_grain_workers_read_the_same_batches_and_fill_the_shared_image_cache(tmp_path):
    pytest.importorskip("grain")
    from test_images import write_classes

    from zoo.data.batching import epoch_plan
    from zoo.data.images import load_image_folder

    write_classes(tmp_path / "folder", per_class=12)
    train = load_image_folder(tmp_path / "folder", cache_dir=tmp_path / "cache", test=0.0).train
    for split, options in ((train, {"shard": (1, 2)}), (ragged_split(64), {"bucket": True})):
        steps = len(split.x) // 4
        reader = StepReader(split, 4, seed=1, steps_per_epoch=steps, **options)
        with BatchStream(reader, 1, 2 * steps, workers=2) as stream:
            got = list(stream)
        assert_same_batches(got, expected(split, 4, 1, 2, **options)[1:])
    # The workers decoded into the cache this process reads, and only process 1's rows (the
    # second half of every batch from step 1 on).
    plans = [epoch_plan(len(train.x), 4, seed=1, epoch=epoch) for epoch in range(2)]
    read = np.concatenate([planned.rows[2:] for planned in (plans[0] + plans[1])[1:]])
    decoded = np.flatnonzero(train.x._cache.done)
    np.testing.assert_array_equal(decoded, np.unique(train.x._rows[read]))


def test_an_image_array_pickles_its_files_not_its_pixels(tmp_path):
    from test_images import write_classes

    from zoo.data.images import load_image_folder

    write_classes(tmp_path / "folder", per_class=20)
    train = load_image_folder(tmp_path / "folder", cache_dir=tmp_path / "cache").train.x
    pixels = np.asarray(train)  # decoded, so the cache holds every row
    copy = pickle.loads(pickle.dumps(train))
    assert len(pickle.dumps(train)) < len(pickle.dumps(train._files)) + 1000  # names, no pixels
    np.testing.assert_array_equal(copy[[3, 0, 5]], pixels[[3, 0, 5]])
    assert copy.files == train.files


def test_streams_refuse_what_they_cannot_read():
    split = Split(np.zeros((10, 2), np.float32), np.zeros(10, np.int32))
    with pytest.raises(ValueError, match="shard"):
        StepReader(split, 5, seed=0, steps_per_epoch=2, shard=(0, 2))
    with pytest.raises(ValueError, match="workers must be >= 0"):
        BatchStream(StepReader(split, 5, seed=0, steps_per_epoch=2), 0, 2, workers=-1)
    with pytest.raises(ValueError, match="an epoch has 2 batches, not 3"):
        next(BatchStream(StepReader(split, 5, seed=0, steps_per_epoch=3), 0, 3))
