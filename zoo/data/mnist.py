"""MNIST from files the user already has: Keras' `mnist.npz` or the original IDX files.

Nothing is downloaded. `path` is either an `.npz` file with `x_train, y_train, x_test, y_test`
(read without pickle), or a directory holding the four IDX files, raw or gzipped, under their
usual names (`train-images-idx3-ubyte[.gz]` or `train-images.idx3-ubyte[.gz]`, and so on).
Every malformed file fails with a `ValueError` that names it.
"""

import gzip
import os

import numpy as np

from zoo.data.arrays import read_npz
from zoo.data.splits import DataError, Dataset, Split, split_by_seed

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
NUM_CLASSES = 10


def load_mnist(path: str | os.PathLike, *, seed: int = 0, validation: float = 0.1) -> Dataset:
    """Loads MNIST as `(N, 28, 28, 1)` float32 images in [0, 1] and int32 labels.

    The official test set is the test split; `validation` of the training set, chosen by `seed`,
    is held out for validation.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        arrays = _load_idx_dir(path)
    elif os.path.isfile(path):
        arrays = _load_npz(path)
    else:
        raise FileNotFoundError(f"MNIST path {path!r} is neither an .npz file nor a directory")
    train_x, train_y, test_x, test_y = (
        arrays[k] for k in ("train_images", "train_labels", "test_images", "test_labels")
    )
    train, val, _ = split_by_seed(train_x, train_y, seed=seed, validation=validation, test=0.0)
    return Dataset(train, val, Split(test_x, test_y), num_classes=NUM_CLASSES)


def read_idx(filename: str) -> np.ndarray:
    """Reads one IDX file (raw, or gzipped when the name ends in `.gz`)."""
    opener = gzip.open if filename.endswith(".gz") else open
    try:
        with opener(filename, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"cannot read IDX file {filename}: {error}") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{filename} is not an IDX file: bad magic number {data[:4].hex()}")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{filename} is truncated: header needs {header} bytes, file has {len(data)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{filename} is truncated or padded: shape {shape} needs {expected} bytes, "
            f"file has {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find_idx(directory: str, stem: str) -> str:
    dotted = stem[::-1].replace("-", ".", 1)[
        ::-1
    ]  # train-images-idx3-ubyte -> train-images.idx3-ubyte
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"no {stem}[.gz] in MNIST directory {directory}")


def _load_idx_dir(directory: str) -> dict[str, np.ndarray]:
    files = {key: _find_idx(directory, stem) for key, stem in _IDX_STEMS.items()}
    raw = {key: read_idx(filename) for key, filename in files.items()}
    return {
        key: _checked(
            raw, key, files[key.split("_")[0] + "_images"], files[key.split("_")[0] + "_labels"]
        )
        for key in raw
    }


def _load_npz(filename: str) -> dict[str, np.ndarray]:
    keys = {
        "train_images": "x_train",
        "train_labels": "y_train",
        "test_images": "x_test",
        "test_labels": "y_test",
    }
    try:
        archive = read_npz(filename)
    except DataError as error:
        raise DataError(f"{error}; MNIST needs mnist.npz or IDX files") from None
    missing = sorted(set(keys.values()) - set(archive))
    if missing:
        raise DataError(f"{filename} lacks arrays {missing}; found {sorted(archive)}")
    raw = {key: archive[name] for key, name in keys.items()}
    return {key: _checked(raw, key, filename, filename) for key in raw}


def _checked(
    raw: dict[str, np.ndarray], key: str, images_file: str, labels_file: str
) -> np.ndarray:
    """Validates one array against its partner and converts it to model-ready dtype and layout."""
    part = key.split("_")[0]
    images, labels = raw[f"{part}_images"], raw[f"{part}_labels"]
    if images.ndim != 3:
        raise ValueError(f"{images_file}: images must be (N, rows, cols), got shape {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{labels_file}: labels must be (N,), got shape {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(
            f"{images_file} has {len(images)} images but {labels_file} has {len(labels)} labels"
        )
    if key.endswith("labels"):
        if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise ValueError(
                f"{labels_file}: labels must be in [0, {NUM_CLASSES}), "
                f"found {labels.min()}..{labels.max()}"
            )
        return labels.astype(np.int32)
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    return (images.astype(np.float32) / scale)[..., None]
