"""Character-level English prose that ships with every CPython: `pydoc_data.topics`.

The 79 help topics (about 465,000 characters, 103 distinct) are joined in sorted order, encoded
with a sorted-character vocabulary and cut by position into train/validation/test, so no test text
is ever seen in training. Each example is `seq_len` characters and the next character at each step.
"""

import numpy as np

from zoo.data.splits import Dataset, Split, split_sizes


def corpus() -> str:
    from pydoc_data.topics import topics

    return "".join(topics[name] for name in sorted(topics))


def load_text(
    *, seq_len: int = 64, validation: float = 0.05, test: float = 0.05, text: str | None = None
) -> Dataset:
    """Loads the corpus (or `text`): `x (N, seq_len)` int32 tokens, `y` the same shifted by one."""
    text = corpus() if text is None else text
    vocab = "".join(sorted(set(text)))
    tokens = encode(text, vocab)
    n_train, n_val, _ = split_sizes(len(tokens), validation=validation, test=test)
    train_end, val_end = n_train, n_train + n_val
    parts = tokens[:train_end], tokens[train_end:val_end], tokens[val_end:]
    splits = [windows(part, seq_len) for part in parts]
    for split in splits:
        check_tokens(split.x, len(vocab))
        check_tokens(split.y, len(vocab))
    if len(splits[0].x) == 0:
        raise ValueError(f"text of {len(text)} characters is too short for seq_len {seq_len}")
    return Dataset(*splits, num_classes=len(vocab), task="language", vocab=vocab)


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


def encode(text: str, vocab: str) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(vocab)}
    unknown = sorted(set(text) - set(lookup))
    if unknown:
        raise ValueError(f"characters {unknown} are not in the vocabulary")
    return np.array([lookup[c] for c in text], np.int32)
