"""Datasets (no downloads: bundled or user-supplied files) and batching."""

from zoo.data.batching import Batch, batches, epoch_order, num_batches
from zoo.data.digits import load_digits
from zoo.data.mnist import load_mnist, read_idx
from zoo.data.splits import Dataset, Split, split_by_seed

DATASETS = ("digits", "mnist")


def load(name: str, *, seed: int = 0, path: str | None = None) -> Dataset:
    """Loads a dataset by name; `mnist` needs `path` to an `.npz` file or an IDX directory."""
    if name == "digits":
        return load_digits(seed=seed)
    if name == "mnist":
        if path is None:
            raise ValueError(
                "the mnist dataset needs a path to mnist.npz or a directory of IDX files"
            )
        return load_mnist(path, seed=seed)
    raise ValueError(f"unknown dataset {name!r}; choose from: {', '.join(DATASETS)}")


__all__ = [
    "DATASETS",
    "Batch",
    "Dataset",
    "Split",
    "batches",
    "epoch_order",
    "load",
    "load_digits",
    "load_mnist",
    "num_batches",
    "read_idx",
    "split_by_seed",
]
