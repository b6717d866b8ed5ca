"""Datasets (no downloads: bundled or user-supplied files) and batching."""

import dataclasses
from collections.abc import Callable
from typing import Any

from zoo.data.arrays import load_arrays, read_jsonl, read_npz
from zoo.data.batching import Batch, batches, epoch_order, num_batches
from zoo.data.digits import load_digits
from zoo.data.mnist import load_mnist, read_idx
from zoo.data.numbers import load_numbers
from zoo.data.sequences import (
    load_digits_moving,
    load_digits_sequences,
    load_digits_strips,
    pad_sequences,
)
from zoo.data.series import MISSING, load_csv_series, load_series, naive_forecast_mse
from zoo.data.splits import (
    RECONSTRUCTION_TASKS,
    DataError,
    Dataset,
    Split,
    map_splits,
    split_by_seed,
    split_sizes,
)
from zoo.data.text import (
    load_text,
    load_text_file,
    load_word_boundaries,
    load_word_boundaries_file,
)


@dataclasses.dataclass(frozen=True)
class Source:
    """How `load` reads one dataset: `path` says what its file is (None: it reads none), with
    `needs_path` False when the bundled data is read without one; `options` are the keyword
    options it reads besides the seed."""

    read: Callable[..., Dataset]
    path: str | None = None
    needs_path: bool = True
    options: tuple[str, ...] = ()


def _bundled(read: Callable[[int], Dataset]) -> Source:
    return Source(lambda seed, **_: read(seed), needs_path=False)


def load_image_folder(path, **options) -> Dataset:
    """`zoo.data.images.load_image_folder` (imported when first used: it needs Pillow)."""
    from zoo.data import images

    return images.load_image_folder(path, **options)


def _text(seed, path=None, **_):
    return load_text() if path is None else load_text_file(path)


def _words(seed, path=None, **_):
    return load_word_boundaries() if path is None else load_word_boundaries_file(path)


SOURCES: dict[str, Source] = {
    "digits": _bundled(lambda seed: load_digits(seed=seed)),
    "digits-seq": _bundled(lambda seed: load_digits_sequences(seed=seed)),
    "digits-strips": _bundled(lambda seed: load_digits_strips(seed=seed)),
    "digits-moving": _bundled(lambda seed: load_digits_moving(seed=seed)),
    "series": _bundled(lambda seed: load_series()),
    "numbers": _bundled(lambda seed: load_numbers(seed=seed)),
    "text": Source(_text, "a UTF-8 text file (default: the bundled pydoc text)", False),
    "words": Source(_words, "a UTF-8 text file (default: the bundled pydoc text)", False),
    "mnist": Source(lambda seed, path, **_: load_mnist(path, seed=seed), "mnist.npz or IDX files"),
    "images": Source(
        lambda seed, path, task=None, **options: load_image_folder(path, seed=seed, **options),
        "a folder of class folders",
        options=(
            "image_size",
            "channels",
            "skip_bad_files",
            "cache_dir",
            "log",
            "shard",
            "combine",
        ),
    ),
    "csv": Source(
        lambda seed, path, task=None, **options: load_csv_series(path, **options),
        "a CSV file",
        options=("column", "time_column", "missing"),
    ),
    "arrays": Source(
        lambda seed, path, task=None, **_: load_arrays(path, task=task or "classify", seed=seed),
        "an .npz archive or a .jsonl file",
    ),
}
DATASETS = tuple(SOURCES)


def check_source(name: str, path: str | None = None, **options: Any) -> None:
    """Rejects a path or an option (None: not given) that dataset `name` would not read, and a
    missing path it needs, naming both."""
    if name not in SOURCES:
        raise DataError(f"unknown dataset {name!r}; choose from: {', '.join(DATASETS)}")
    source = SOURCES[name]
    readers = [n for n, s in SOURCES.items() if s.path is not None]
    if path is not None and source.path is None:
        raise DataError(
            f"data_path is not read by dataset {name!r}, which is bundled; datasets that read a "
            f"path: {', '.join(readers)}"
        )
    if path is None and source.needs_path:
        raise DataError(f"dataset {name!r} needs data_path: {source.path}")
    for option, value in sorted(options.items()):
        if value is not None and option not in source.options:
            owners = [n for n, s in SOURCES.items() if option in s.options]
            raise DataError(
                f"{option} is not read by dataset {name!r}; it is read by: {', '.join(owners)}"
            )


def load(
    name: str,
    *,
    seed: int = 0,
    path: str | None = None,
    task: str | None = None,
    **options: Any,
) -> Dataset:
    """Loads dataset `name` (`path` for those that read a file or folder).

    `seed` fixes the split where a dataset is split at random (digits, images, arrays, the MNIST
    validation); `text`, `words`, `series` and `csv` are split by position, the same for every seed.
    `task` tells `arrays` what its `y` holds (the model's task; default 'classify'). `options`
    are the dataset's own (`SOURCES[name].options`); None means not given.
    """
    check_source(name, path, **options)
    given = {key: value for key, value in options.items() if value is not None}
    return SOURCES[name].read(seed, path=path, task=task, **given)


__all__ = [
    "DATASETS",
    "MISSING",
    "RECONSTRUCTION_TASKS",
    "SOURCES",
    "DataError",
    "Source",
    "check_source",
    "load_arrays",
    "load_csv_series",
    "load_image_folder",
    "load_text_file",
    "load_word_boundaries",
    "load_word_boundaries_file",
    "read_jsonl",
    "read_npz",
    "Batch",
    "Dataset",
    "Split",
    "batches",
    "epoch_order",
    "load",
    "load_digits",
    "load_digits_sequences",
    "load_digits_strips",
    "load_digits_moving",
    "load_mnist",
    "load_numbers",
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
