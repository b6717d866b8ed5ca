"""The labelled-array container every dataset returns, and deterministic splitting."""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

# Tasks whose models reconstruct their inputs: any dataset of images trains them, its labels
# unused (the target is the input itself).
RECONSTRUCTION_TASKS = ("reconstruct", "vae")


class DataError(ValueError):
    """A dataset file or folder cannot be used; the message names the file, row or flag."""


class Split(NamedTuple):
    """One split: `x` is `(N, *example_shape)`; `y` is `(N,)` int32 class labels ('classify'),
    `(N, T)` int32 next tokens ('language') or `(N, D)` float32 targets ('regress'); for the
    reconstruction tasks it is unused (class labels, or zeros).

    `lengths` `(N,)` int32, for sequences padded at the end: example `i` is `x[i, :lengths[i]]`.
    `x` may be any array-like with `shape`, `dtype`, `len` and `x[index_array]` (images decoded
    as they are read, for example).
    """

    x: np.ndarray
    y: np.ndarray
    lengths: np.ndarray | None = None


class Dataset(NamedTuple):
    """Train/validation/test splits plus what a model needs to know about them.

    `num_classes` is the model's output width: classes, vocabulary size, or forecast horizon.
    `vocab` maps token ids to characters for language datasets (to source tokens for seq2seq
    ones), `class_names` names a classifier's classes (a seq2seq dataset's target tokens), and
    `stats` holds what was fitted on the training split to prepare the inputs (a series' `mean`
    and `std`): what a trained model needs to be used on new data.
    """

    train: Split
    validation: Split
    test: Split
    num_classes: int
    task: str = "classify"
    vocab: str | tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None
    stats: dict[str, float] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def split_sizes(num_examples: int, *, validation: float, test: float) -> tuple[int, int, int]:
    """`(train, validation, test)` counts for the given fractions, rounded."""
    if not (0 <= validation < 1 and 0 <= test < 1 and validation + test < 1):
        raise ValueError(
            f"split fractions validation={validation}, test={test} must leave a train set"
        )
    n_test, n_val = round(num_examples * test), round(num_examples * validation)
    return num_examples - n_val - n_test, n_val, n_test


def map_splits(dataset: Dataset, fn: Callable[[Split], Split]) -> Dataset:
    """`dataset` with `fn` applied to each of its three splits."""
    return dataset._replace(
        train=fn(dataset.train), validation=fn(dataset.validation), test=fn(dataset.test)
    )


def split_by_seed(
    x: np.ndarray, y: np.ndarray, *, seed: int, validation: float, test: float
) -> tuple[Split, Split, Split]:
    """Shuffles `(x, y)` by `seed` and cuts it into train/validation/test by the given fractions.

    The same seed always gives the same split, independent of anything else in the run.
    """
    _, n_val, n_test = split_sizes(len(x), validation=validation, test=test)
    order = np.random.default_rng(seed).permutation(len(x))
    parts = np.split(order, [n_test, n_test + n_val])
    test_split, val_split, train_split = (Split(x[idx], y[idx]) for idx in parts)
    return train_split, val_split, test_split
