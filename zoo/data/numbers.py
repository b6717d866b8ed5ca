"""Integers to English words, a sequence-to-sequence task with nothing to download.

Each example is an integer below `limit` (default 100,000): the source is its decimal digits as
characters ("4217"), the target its English words ("four thousand two hundred seventeen"), in
American style: no "and", no hyphens, so "seventy seven" is two word tokens.

The integers below 1,000 are the words every larger number is spelled with, and the first ones
a user tries, but they are 1% of 0..99,999: drawn like the rest, a model saw "7" a few times
and wrote "seventy seven" for it. So they are all in the training split, each digit count
repeated to about 5% of it; the integers from 1,000 on are shuffled by the seed and cut into
train/validation/test, so a test integer is never seen in training.

Token ids (both vocabularies): 0 is PAD, 1 BOS (begin of sequence, the decoder's first input),
2 EOS (end of sequence); then the digits "0".."9" (source, 13 ids) or the 30 words (target,
33 ids). These are `zoo.models.seq2seq`'s `PAD`, `BOS` and `EOS`.

    x (N, 5)  source ids, PAD after the last digit; `lengths` (N,) the digit counts
    y (N, 8)  target ids: the words, EOS, then PAD
"""

from collections.abc import Sequence

import numpy as np

from zoo.data.splits import DataError, Dataset, Split, split_sizes

SPECIALS = ("<pad>", "<bos>", "<eos>")
PAD, BOS, EOS = range(len(SPECIALS))
ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)  # fmt: skip
TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
SOURCE_VOCAB = SPECIALS + tuple("0123456789")
TARGET_VOCAB = SPECIALS + ONES + TENS + ("hundred", "thousand")
MAX_NUMBER = 999_999  # "thousand" is the largest scale word


def words(number: int) -> list[str]:
    """English words of `0 <= number <= 999,999`: 4217 -> four thousand two hundred seventeen.

    Raises:
      ValueError: for a number outside that range, or not an integer.
    """
    if isinstance(number, bool) or not isinstance(number, int | np.integer):
        raise ValueError(f"words takes an integer, got {number!r}")
    if not 0 <= number <= MAX_NUMBER:
        raise ValueError(f"words takes integers in [0, {MAX_NUMBER}], got {number}")
    if number == 0:
        return ["zero"]
    thousands, rest = divmod(int(number), 1000)
    out = _below_thousand(thousands) + ["thousand"] if thousands else []
    return out + _below_thousand(rest)


def _below_thousand(number: int) -> list[str]:
    """Words of `0 <= number < 1000`; none for 0 (it is only spoken alone)."""
    hundreds, rest = divmod(number, 100)
    out = [ONES[hundreds], "hundred"] if hundreds else []
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        return out + [TENS[tens - 2]] + ([ONES[ones]] if ones else [])
    return out + ([ONES[rest]] if rest else [])


def parse(tokens: Sequence[str]) -> int:
    """The integer English `tokens` name: `words`' inverse, written independently of it (a
    running total for the part below a thousand, which "thousand" multiplies).

    Raises:
      ValueError: for an unknown word.
    """
    values = {word: i for i, word in enumerate(ONES)} | {w: 20 + 10 * i for i, w in enumerate(TENS)}
    total, part = 0, 0
    for word in tokens:
        if word == "thousand":
            total, part = total + part * 1000, 0
        elif word == "hundred":
            part *= 100
        elif word in values:
            part += values[word]
        else:
            raise ValueError(f"{word!r} is not a number word")
    return total + part


def encode_source(number: int, length: int) -> np.ndarray:
    """Source ids `(length,)` of `number`'s digits, PAD after them."""
    digits = str(number)
    if len(digits) > length:
        raise ValueError(f"{number} has more than {length} digits")
    ids = [SOURCE_VOCAB.index(d) for d in digits]
    return np.array(ids + [PAD] * (length - len(ids)), np.int32)


def encode_target(number: int, length: int) -> np.ndarray:
    """Target ids `(length,)` of `number`'s words, EOS, then PAD."""
    ids = [TARGET_VOCAB.index(w) for w in words(number)] + [EOS]
    if len(ids) > length:
        raise ValueError(f"{number} takes {len(ids)} target tokens, more than {length}")
    return np.array(ids + [PAD] * (length - len(ids)), np.int32)


def decode_target(ids: Sequence[int]) -> list[str]:
    """The words of target ids, up to (not including) the first EOS; BOS and PAD skipped."""
    out = []
    for i in np.asarray(ids).ravel().tolist():
        if i == EOS:
            break
        if not 0 <= i < len(TARGET_VOCAB):
            raise ValueError(f"target ids must be in [0, {len(TARGET_VOCAB)}), found {i}")
        if i not in (PAD, BOS):
            out.append(TARGET_VOCAB[i])
    return out


def numbers_split(numbers: np.ndarray, source_length: int, target_length: int) -> Split:
    """The examples of `numbers` `(N,)`: source ids, target ids and the digit counts."""
    x = np.zeros((len(numbers), source_length), np.int32)
    y = np.zeros((len(numbers), target_length), np.int32)
    for row, number in enumerate(numbers.tolist()):
        x[row] = encode_source(number, source_length)
        y[row] = encode_target(number, target_length)
    lengths = np.array([len(str(n)) for n in numbers.tolist()], np.int32)
    return Split(x, y, lengths)


def _repeated_by_digits(short: int, others: int, share: float) -> np.ndarray:
    """`0 .. short-1`, each digit count repeated to about `share` of a training split of
    these and `others` integers."""
    buckets = [np.arange(10**d // 10 if d > 1 else 0, min(10**d, short)) for d in range(1, 7)]
    buckets = [bucket for bucket in buckets if bucket.size]
    total = others + short  # about: the repeats add a little
    return np.concatenate(
        [np.tile(b, max(1, int(np.ceil(share * total / b.size)))) for b in buckets] or [[]]
    ).astype(np.int64)


def load_numbers(
    *,
    seed: int = 0,
    limit: int = 100_000,
    validation: float = 0.1,
    test: float = 0.1,
    always_trained: int = 1000,
    short_share: float = 0.05,
) -> Dataset:
    """The integers `0 .. limit-1` as digits -> words (see the module docstring): those below
    `always_trained` (when `limit` is 10 times larger; else none) in the training split, each
    digit count repeated to about `short_share` of it; the others shuffled by `seed` and
    split into disjoint train/validation/test sets by the given fractions.

    `vocab` holds the source tokens and `class_names` the target tokens, each indexed by id.
    """
    if not 1 <= limit <= MAX_NUMBER + 1:
        raise DataError(f"numbers limit must be in [1, {MAX_NUMBER + 1}], got {limit}")
    short = always_trained if limit >= 10 * always_trained else 0
    _, n_val, n_test = split_sizes(limit - short, validation=validation, test=test)
    order = short + np.random.default_rng(seed).permutation(limit - short)
    test_part, val_part, train_part = np.split(order, [n_test, n_test + n_val])
    train_part = np.concatenate(
        [_repeated_by_digits(short, len(train_part), short_share), train_part]
    )
    source_length = len(str(limit - 1))
    target_length = max(len(words(n)) for n in range(limit)) + 1  # and EOS
    test_split, val_split, train_split = (
        numbers_split(part, source_length, target_length)
        for part in (test_part, val_part, train_part)
    )
    return Dataset(
        train_split,
        val_split,
        test_split,
        num_classes=len(TARGET_VOCAB),
        task="seq2seq",
        vocab=SOURCE_VOCAB,
        class_names=TARGET_VOCAB,
    )
