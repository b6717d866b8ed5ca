"""Character-level text: the English prose that ships with every CPython (`pydoc_data.topics`),
or a UTF-8 file of the user's.

The bundled corpus is the 79 help topics (about 465,000 characters) joined in sorted order. A text
is cut by position into train/validation/test, so no test text is ever seen in training, and
encoded with the sorted characters of the training part plus `UNKNOWN`, which stands for every
character the training part lacks. Two tasks are made from it: a language model's (`load_text`:
each example is `seq_len` characters and the next character at each step) and a tagger's
(`load_word_boundaries`: a line with its spaces taken out, and where each word ends).
"""

import os

import numpy as np

from zoo.data.splits import DataError, Dataset, Split, split_sizes

UNKNOWN = "\ufffd"  # the Unicode replacement character


def corpus() -> str:
    from pydoc_data.topics import topics

    return "".join(topics[name] for name in sorted(topics))


def load_text(
    *, seq_len: int = 64, validation: float = 0.05, test: float = 0.05, text: str | None = None
) -> Dataset:
    """Loads the corpus (or `text`): `x (N, seq_len)` int32 tokens, `y` the same shifted by one.

    `stats["unknown_characters"]` counts the validation and test characters outside the training
    part's vocabulary (encoded as `UNKNOWN`).
    """
    text = corpus() if text is None else text
    n_train, n_val, _ = split_sizes(len(text), validation=validation, test=test)
    train_end, val_end = n_train, n_train + n_val
    vocab = "".join(sorted(set(text[:train_end]) | {UNKNOWN}))
    tokens = encode(text, vocab, unknown=UNKNOWN)
    parts = tokens[:train_end], tokens[train_end:val_end], tokens[val_end:]
    splits = [windows(part, seq_len) for part in parts]
    for split in splits:
        check_tokens(split.x, len(vocab))
        check_tokens(split.y, len(vocab))
    if len(splits[0].x) == 0:
        raise DataError(
            f"text of {len(text)} characters is too short for seq_len {seq_len}: its training "
            f"part has {n_train}"
        )
    unknown = sum(text[train_end:].count(c) for c in set(text[train_end:]) - set(vocab))
    return Dataset(
        *splits,
        num_classes=len(vocab),
        task="language",
        vocab=vocab,
        stats={"unknown_characters": unknown},
    )


def load_text_file(path: str | os.PathLike, **options) -> Dataset:
    """`load_text` on the UTF-8 file at `path` (`options` as for `load_text`)."""
    return _on_file(load_text, path, **options)


def _on_file(load, path: str | os.PathLike, **options) -> Dataset:
    """`load(text=..., **options)` on the UTF-8 file at `path`, its errors naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"text file {path!r} does not exist")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path} is not UTF-8 text: byte {error.start} (line {line}) is "
            f"{raw[error.start : error.start + 1]!r}"
        ) from None
    if not text:
        raise DataError(f"text file {path} is empty")
    try:
        return load(text=text, **options)
    except DataError as error:
        raise DataError(f"{path}: {error}") from None


def load_word_boundaries(
    *, max_length: int = 64, validation: float = 0.05, test: float = 0.05, text: str | None = None
) -> Dataset:
    """A per-character tagging task: each line of the corpus (or `text`) with its spaces taken
    out, every character tagged 1 where a word ends after it and 0 inside a word.

    Lines longer than `max_length` characters (spaces left out) are cut between words; a word
    longer than that is left out, cutting its line there; pieces of one word are dropped
    (nothing to find). The
    lines are split by position like `load_text`, encoded with the training part's characters
    plus `UNKNOWN`, and padded at the end: `x (N, max_length)` int32 characters, `y` the same
    shape of tags (0 on padding), `lengths (N,)`.

    `stats["unknown_characters"]` counts validation and test characters outside the
    vocabulary.
    """
    if max_length < 2:
        raise DataError(f"max_length must be at least 2, got {max_length}")
    text = corpus() if text is None else text
    lines = [piece for line in text.splitlines() for piece in _cut(line.split(), max_length)]
    lines = [words for words in lines if len(words) >= 2]
    if len(lines) < 3:
        raise DataError(
            f"text has {len(lines)} lines of two or more words; a tagging task needs at least 3"
        )
    n_train, n_val, _ = split_sizes(len(lines), validation=validation, test=test)
    parts = lines[:n_train], lines[n_train : n_train + n_val], lines[n_train + n_val :]
    vocab = "".join(sorted({c for words in parts[0] for word in words for c in word} | {UNKNOWN}))
    splits = [_tagged(part, vocab, max_length) for part in parts]
    held_out = "".join(word for part in parts[1:] for words in part for word in words)
    return Dataset(
        *splits,
        num_classes=2,
        task="tag",
        vocab=vocab,
        class_names=("inside", "word end"),
        stats={"unknown_characters": sum(c not in vocab for c in held_out)},
    )


def load_word_boundaries_file(path: str | os.PathLike, **options) -> Dataset:
    """`load_word_boundaries` on the UTF-8 file at `path`."""
    return _on_file(load_word_boundaries, path, **options)


def _cut(words: list[str], max_length: int) -> list[list[str]]:
    """`words` in consecutive runs of at most `max_length` characters in all; a longer word
    ends a run and is in none."""
    runs, run, size = [], [], 0
    for word in words:
        if run and size + len(word) > max_length:
            runs.append(run)
            run, size = [], 0
        if len(word) <= max_length:
            run.append(word)
            size += len(word)
    return runs + [run] if run else runs


def _tagged(lines: list[list[str]], vocab: str, max_length: int) -> Split:
    x = np.zeros((len(lines), max_length), np.int32)
    y = np.zeros((len(lines), max_length), np.int32)
    lengths = np.zeros(len(lines), np.int32)
    for row, words in enumerate(lines):
        chars = "".join(words)
        x[row, : len(chars)] = encode(chars, vocab, unknown=UNKNOWN)
        y[row, np.cumsum([len(word) for word in words]) - 1] = 1
        lengths[row] = len(chars)
    return Split(x, y, lengths)


def windows(tokens: np.ndarray, seq_len: int) -> Split:
    """Non-overlapping windows: `x[i] = tokens[i*L : (i+1)*L]`, `y[i]` the same shifted by one."""
    count = max((len(tokens) - 1) // seq_len, 0)
    x = tokens[: count * seq_len].reshape(count, seq_len)
    y = tokens[1 : count * seq_len + 1].reshape(count, seq_len)
    return Split(x, y)


def check_tokens(tokens: np.ndarray, vocab_size: int) -> None:
    """Rejects ids outside `[0, vocab_size)`: an embedding would give NaN for them, `decode` the
    wrong character (a negative id indexes from the end)."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(
            f"text tokens must be in [0, {vocab_size}) (the vocabulary size), "
            f"found ids {tokens.min()}..{tokens.max()}"
        )


def decode(tokens, vocab: str) -> str:
    check_tokens(tokens, len(vocab))
    return "".join(vocab[int(t)] for t in np.asarray(tokens).ravel())


def encode(text: str, vocab: str, *, unknown: str | None = None) -> np.ndarray:
    """Token ids of `text`; characters outside `vocab` become `unknown`'s id (None: an error)."""
    lookup = {c: i for i, c in enumerate(vocab)}
    missing = sorted(set(text) - set(lookup))
    if missing and (unknown is None or unknown not in lookup):
        raise DataError(f"characters {missing} are not in the vocabulary")
    fallback = lookup.get(unknown, -1)
    return np.array([lookup.get(c, fallback) for c in text], np.int32)
