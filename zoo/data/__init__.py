"""Datasets (no downloads: bundled or user-supplied files) and batching."""

from collections.abc import Callable

from zoo.data.batching import Batch, batches, epoch_order, num_batches
from zoo.data.digits import load_digits
from zoo.data.mnist import load_mnist, read_idx
from zoo.data.sequences import load_digits_sequences, load_digits_strips, pad_sequences
from zoo.data.series import load_series, naive_forecast_mse
from zoo.data.splits import Dataset, Split, map_splits, split_by_seed, split_sizes
from zoo.data.text import load_text

_LOADERS: dict[str, Callable[[int], Dataset]] = {
    "digits": lambda seed: load_digits(seed=seed),
    "digits-seq": lambda seed: load_digits_sequences(seed=seed),
    "digits-strips": lambda seed: load_digits_strips(seed=seed),
    "text": lambda seed: load_text(),
    "series": lambda seed: load_series(),
}
DATASETS = (*_LOADERS, "mnist")


def load(name: str, *, seed: int = 0, path: str | None = None) -> Dataset:
    """Loads a dataset by name; `mnist` needs `path` to an `.npz` file or an IDX directory.

    `seed` fixes the split where a dataset is split at random (the digits and MNIST validation);
    `text` and `series` are split by position, the same for every seed.
    """
    if name == "mnist":
        if path is None:
            raise ValueError(
                "the mnist dataset needs a path to mnist.npz or a directory of IDX files"
            )
        return load_mnist(path, seed=seed)
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose from: {', '.join(DATASETS)}")
    return _LOADERS[name](seed)


__all__ = [
    "DATASETS",
    "Batch",
    "Dataset",
    "Split",
    "batches",
    "epoch_order",
    "load",
    "load_digits",
    "load_digits_sequences",
    "load_digits_strips",
    "load_mnist",
    "load_series",
    "load_text",
    "map_splits",
    "naive_forecast_mse",
    "num_batches",
    "pad_sequences",
    "read_idx",
    "split_by_seed",
    "split_sizes",
]
