"""The labelled-array container every dataset returns, and deterministic splitting."""

from typing import NamedTuple

import numpy as np


class Split(NamedTuple):
    """One split of a classification dataset: `x` is `(N, *example_shape)`, `y` is `(N,)` int32."""

    x: np.ndarray
    y: np.ndarray


class Dataset(NamedTuple):
    """Train/validation/test splits plus what a model needs to know about them."""

    train: Split
    validation: Split
    test: Split
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def split_by_seed(
    x: np.ndarray, y: np.ndarray, *, seed: int, validation: float, test: float
) -> tuple[Split, Split, Split]:
    """Shuffles `(x, y)` by `seed` and cuts it into train/validation/test by the given fractions.

    The same seed always gives the same split, independent of anything else in the run.
    """
    if not (0 <= validation < 1 and 0 <= test < 1 and validation + test < 1):
        raise ValueError(
            f"split fractions validation={validation}, test={test} must leave a train set"
        )
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = round(len(x) * test)
    n_val = round(len(x) * validation)
    parts = np.split(order, [n_test, n_test + n_val])
    test_split, val_split, train_split = (Split(x[idx], y[idx]) for idx in parts)
    return train_split, val_split, test_split
