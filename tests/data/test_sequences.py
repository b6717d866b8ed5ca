import numpy as np
import pytest

from zoo.data import load_digits, load_digits_sequences, load_digits_strips, pad_sequences


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
