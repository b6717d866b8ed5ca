"""The integers-to-words task: the words of hand-checked numbers, a round trip through an
independent parser, and disjoint splits."""

import numpy as np
import pytest

from zoo import data
from zoo.data import numbers
from zoo.models import seq2seq


@pytest.mark.parametrize(
    "number, text",
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (20, "twenty"),
        (42, "forty two"),
        (100, "one hundred"),
        (101, "one hundred one"),
        (110, "one hundred ten"),
        (1000, "one thousand"),
        (1001, "one thousand one"),
        (4217, "four thousand two hundred seventeen"),
        (12000, "twelve thousand"),
        (90017, "ninety thousand seventeen"),
        (99999, "ninety nine thousand nine hundred ninety nine"),
        (700070, "seven hundred thousand seventy"),
    ],
)
def test_words_of_hand_checked_numbers(number, text):
    assert " ".join(numbers.words(number)) == text
    assert numbers.parse(text.split()) == number


def test_every_number_below_100000_round_trips_and_fits_the_vocabulary():
    vocabulary = set(numbers.TARGET_VOCAB)
    longest = 0
    for number in range(100_000):
        tokens = numbers.words(number)
        assert numbers.parse(tokens) == number
        assert set(tokens) <= vocabulary
        longest = max(longest, len(tokens))
    assert longest == 7  # 77777: seventy seven thousand seven hundred seventy seven
    assert len(numbers.TARGET_VOCAB) == 33 and len(numbers.SOURCE_VOCAB) == 13


def test_special_ids_are_the_models():
    assert (numbers.PAD, numbers.BOS, numbers.EOS) == (seq2seq.PAD, seq2seq.BOS, seq2seq.EOS)
    assert numbers.TARGET_VOCAB[:3] == numbers.SOURCE_VOCAB[:3] == ("<pad>", "<bos>", "<eos>")


def test_bad_numbers_are_refused():
    for bad in (-1, 1_000_000, 1.5, True, "12"):
        with pytest.raises(ValueError, match="words takes"):
            numbers.words(bad)
    with pytest.raises(ValueError, match="'eleventy' is not a number word"):
        numbers.parse(["eleventy"])
    with pytest.raises(data.DataError, match="numbers limit must be in"):
        numbers.load_numbers(limit=0)


def _integers(split: data.Split) -> np.ndarray:
    """The integers a split's sources spell, read back from their digits."""
    digits = np.array(numbers.SOURCE_VOCAB)[split.x]
    return np.array([int("".join(row[:n])) for row, n in zip(digits, split.lengths, strict=True)])


def test_the_splits_are_disjoint_and_short_numbers_are_all_trained_often():
    dataset = data.load("numbers", seed=3)
    assert dataset.task == "seq2seq" and dataset.num_classes == len(dataset.class_names) == 33
    assert dataset.vocab == numbers.SOURCE_VOCAB and dataset.input_shape == (5,)
    parts = [_integers(split) for split in dataset[:3]]
    assert [len(np.unique(p)) for p in parts] == [80_200, 9_900, 9_900]
    together = np.concatenate([np.unique(p) for p in parts])
    assert len(np.unique(together)) == 100_000 and together.min() == 0 and together.max() == 99_999
    assert parts[1].min() >= 1000 and parts[2].min() >= 1000  # held out: 4 and 5 digits
    digit_counts = np.bincount(dataset.train.lengths, minlength=6)[1:] / len(parts[0])
    assert digit_counts[:3].min() > 0.04  # "7" is trained about 400 times, not once
    other = numbers.load_numbers(seed=4)
    assert not np.array_equal(_integers(other.test), parts[2])  # the seed picks the split
    np.testing.assert_array_equal(_integers(numbers.load_numbers(seed=3).test), parts[2])


def test_examples_are_digits_in_and_words_eos_then_pad_out():
    dataset = numbers.load_numbers(limit=2000, seed=0)
    split = dataset.test
    assert split.x.shape == (200, 4) and split.y.shape == (200, 7)  # 1777: six words and EOS
    assert split.x.dtype == split.y.dtype == split.lengths.dtype == np.int32
    for source, target, length, number in zip(
        split.x, split.y, split.lengths, _integers(split), strict=True
    ):
        assert length == len(str(number)) and np.all(source[length:] == numbers.PAD)
        assert numbers.decode_target(target) == numbers.words(int(number))
        end = len(numbers.words(int(number)))
        assert target[end] == numbers.EOS and np.all(target[end + 1 :] == numbers.PAD)
