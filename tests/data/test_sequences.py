import numpy as np
import pytest

from zoo.data import (
    load_digits,
    load_digits_moving,
    load_digits_sequences,
    load_digits_strips,
    pad_sequences,
)
from zoo.data.sequences import bouncing_paths


def test_post_padding_and_lengths():
    padded, lengths = pad_sequences([[1, 2, 3], [4], [5, 6]])
    np.testing.assert_array_equal(padded, [[1, 2, 3], [4, 0, 0], [5, 6, 0]])
    np.testing.assert_array_equal(lengths, [3, 1, 2])


def test_pre_padding_truncation_and_features():
    sequences = [np.ones((4, 2)), 2 * np.ones((1, 2))]
    padded, lengths = pad_sequences(
        sequences, max_length=3, padding="pre", truncating="pre", value=-1
    )
    assert padded.shape == (2, 3, 2)
    np.testing.assert_array_equal(padded[1, :, 0], [-1, -1, 2])
    np.testing.assert_array_equal(lengths, [3, 1])
    kept_end, _ = pad_sequences([[1, 2, 3, 4]], max_length=2, truncating="pre")
    kept_start, _ = pad_sequences([[1, 2, 3, 4]], max_length=2, truncating="post")
    np.testing.assert_array_equal(kept_end, [[3, 4]])
    np.testing.assert_array_equal(kept_start, [[1, 2]])


@pytest.mark.parametrize(
    "sequences, options, match",
    [
        ([np.ones((3, 2)), np.ones((2, 5))], {}, r"sequence 1 has shape \(2, 5\)"),
        ([1.0, 2.0], {}, r"sequence 0 has shape \(\)"),
        ([], {}, "at least one sequence"),
        ([[1, 2]], {"padding": "middle"}, "padding must be 'post' or 'pre'"),
        ([[1, 2]], {"max_length": 0}, "max_length must be >= 1"),
    ],
)
def test_ragged_or_bad_input_is_named(sequences, options, match):
    with pytest.raises(ValueError, match=match):
        pad_sequences(sequences, **options)


def test_digits_as_rows_and_strips_are_the_same_pixels():
    pytest.importorskip("sklearn")
    images = load_digits(seed=3).test.x  # (N, 28, 28, 1)
    rows = load_digits_sequences(seed=3).test.x
    strips = load_digits_strips(seed=3).test.x
    assert rows.shape == (len(images), 28, 28) and strips.shape == (len(images), 4, 7, 28, 1)
    np.testing.assert_array_equal(rows, images[..., 0])
    np.testing.assert_array_equal(strips.reshape(images.shape), images)
    with pytest.raises(ValueError, match="strips must divide 28"):
        load_digits_strips(strips=5)


@pytest.fixture(scope="module")
def moving():
    pytest.importorskip("sklearn")
    return load_digits_moving(seed=3)


def test_moving_digits_shapes_and_split_follow_load_digits(moving):
    digits = load_digits(seed=3, image_size=8)
    for split, images in zip(moving[:3], digits[:3], strict=True):
        assert split.x.shape == (len(images.x), 8, 16, 16, 1) and split.x.dtype == np.float32
        np.testing.assert_array_equal(split.y, images.y)  # the same digits in the same order
    assert [len(split.x) for split in moving[:3]] == [1258, 180, 359]
    assert moving.num_classes == 10 and moving.train.lengths is None


def test_every_frame_holds_the_whole_digit_and_nothing_else(moving):
    digits = load_digits(seed=3, image_size=8).test.x[..., 0]  # (N, 8, 8), the raw pixels
    for clip, digit in zip(moving.test.x[..., 0], digits, strict=True):
        top, left = np.argwhere(digit > 0).min(axis=0)
        corners = []
        for frame in clip:
            row, col = np.argwhere(frame > 0).min(axis=0) - (top, left)
            np.testing.assert_array_equal(frame[row : row + 8, col : col + 8], digit)
            assert frame.sum() == pytest.approx(digit.sum())  # no pixel left the canvas
            corners.append((row, col))
        assert len(set(corners)) > 1  # it moves


def test_moving_digits_are_fixed_by_the_seed():
    pytest.importorskip("sklearn")
    first, again = load_digits_moving(seed=1), load_digits_moving(seed=1)
    np.testing.assert_array_equal(first.train.x, again.train.x)
    assert not np.array_equal(first.test.x, load_digits_moving(seed=2).test.x)


def test_paths_move_straight_and_bounce_inside_the_room():
    corners = bouncing_paths(np.random.default_rng(0), 500, 12, room=5, max_speed=2)
    assert corners.shape == (500, 12, 2) and corners.min() == 0 and corners.max() == 5
    steps = np.diff(corners, axis=1)  # (N, T - 1, 2)
    assert np.abs(steps).max() <= 2 and np.abs(steps).sum(axis=(1, 2)).all()  # never still
    # Between bounces a path keeps its velocity: a step changes only next to a wall.
    changed = np.diff(steps, axis=1) != 0  # (N, T - 2, 2)
    near_wall = (corners[:, 1:-1] <= 1) | (corners[:, 1:-1] >= 4)  # within a step of a wall
    assert changed.any() and not (changed & ~near_wall).any()


@pytest.mark.parametrize(
    "options, match",
    [({"canvas": 7}, "canvas must be at least"), ({"steps": 0}, "steps and max_speed must be")],
)
def test_bad_moving_digits_options_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        load_digits_moving(**options)
