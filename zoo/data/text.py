"""Character-level text: the English prose that ships with every CPython (`pydoc_data.topics`),
or a UTF-8 file of the user's.

The bundled corpus is the 79 help topics (about 465,000 characters) joined in sorted order. A text
is cut by position into train/validation/test, so no test text is ever seen in training, and
encoded with the sorted characters of the training part plus `UNKNOWN`, which stands for every
character the training part lacks. Each example is `seq_len` characters and the next character at
each step.
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
        return load_text(text=text, **options)
    except DataError as error:
        raise DataError(f"{path}: {error}") from None


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
