"""The user's own arrays: an `.npz` archive, or JSON lines of (possibly ragged) sequences.

An archive holds `x` and `y`, optionally `lengths` (for sequences padded at the end), and may
hold its own splits as `x_val`/`y_val`[/`lengths_val`] and `x_test`/`y_test`[/`lengths_test`];
a split it lacks is cut from `x`/`y` by the seed. It is read without pickle. A JSON-lines file
has one `{"x": ..., "y": ...}` object per line; sequences of different lengths are padded at the
end and their `lengths` kept.

What `y` must be follows the model's task: integer class labels `(N,)` ('classify'; the classes
are `0..max(y)`), integer next tokens `(N, T)` with integer `x` ('language'), integer tags
`(N, T)` of features `x (N, T, F)` ('tag'; ragged JSON lines give each step's tag), or real
targets `(N,)` or `(N, D)` ('regress'); for a model that reconstructs its input ('reconstruct',
'vae') `y` may be left out, and is ignored.
"""

import json
import os
import zipfile

import numpy as np

from zoo.data.sequences import pad_sequences
from zoo.data.splits import RECONSTRUCTION_TASKS, DataError, Dataset, Split, split_by_seed

_SPLITS = {"train": "", "validation": "_val", "test": "_test"}
_KEYS = {f"{name}{suffix}" for suffix in _SPLITS.values() for name in ("x", "y", "lengths")}


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an `.npz` archive, refusing pickled objects."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"array file {path!r} does not exist")
    if not zipfile.is_zipfile(path):
        # np.load would take it for a pickle, the one format left once npy and npz are ruled out.
        raise DataError(f"{path} is not an npz (zip) archive")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    except ValueError as error:
        if "pickle" in str(error):
            raise DataError(f"{path} holds pickled objects; refusing to load it") from None
        raise DataError(f"cannot read {path}: {error}") from None


def load_arrays(
    path: str | os.PathLike,
    *,
    task: str = "classify",
    seed: int = 0,
    validation: float = 0.1,
    test: float = 0.2,
) -> Dataset:
    """Loads an `.npz` archive or a `.jsonl` file (by its suffix) for a model of `task`."""
    path = os.fspath(path)
    arrays = read_jsonl(path) if path.endswith((".jsonl", ".json")) else read_npz(path)
    unknown = sorted(set(arrays) - _KEYS)
    if unknown:
        raise DataError(
            f"{path} holds arrays {', '.join(unknown)}; expected x, y and optionally lengths, "
            "x_val, y_val, lengths_val, x_test, y_test, lengths_test"
        )
    if task in RECONSTRUCTION_TASKS:  # the target is x itself
        xs = [name for name in arrays if name.startswith("x")]
        arrays = {name: array for name, array in arrays.items() if not name.startswith("y")}
        arrays |= {"y" + name[1:]: np.zeros(len(arrays[name]), np.int32) for name in xs}
    given = {}
    for split, suffix in _SPLITS.items():
        names = [f"x{suffix}", f"y{suffix}"]
        present = [name for name in names if name in arrays]
        if present and len(present) < 2 or not present and split == "train":
            lacking = sorted(set(names) - set(present))
            raise DataError(f"{path} lacks {', '.join(lacking)}")
        if present:
            given[split] = _split(path, arrays, suffix, task)
    train = given["train"]
    n = len(train.x)
    order = split_by_seed(
        np.arange(n),
        np.arange(n),
        seed=seed,
        validation=0.0 if "validation" in given else validation,
        test=0.0 if "test" in given else test,
    )
    cut = dict(zip(_SPLITS, (_rows(train, part.x) for part in order), strict=True))
    splits = {name: cut[name] if name == "train" else given.get(name, cut[name]) for name in cut}
    _check_shapes(path, splits)
    return Dataset(
        splits["train"],
        splits["validation"],
        splits["test"],
        num_classes=_output_width(path, splits, task),
        task=task,
    )


def read_jsonl(path: str) -> dict[str, np.ndarray]:
    """`x`, `y` (and `lengths` when the sequences differ in length) of a JSON-lines file."""
    if not os.path.isfile(path):
        raise DataError(f"JSON-lines file {path!r} does not exist")
    xs, ys = [], []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path} line {line_number} is not JSON: {error.msg}") from None
            if not isinstance(record, dict) or set(record) != {"x", "y"}:
                raise DataError(
                    f'{path} line {line_number} must be an object {{"x": ..., "y": ...}}'
                )
            xs.append(record["x"])
            ys.append(record["y"])
    if not xs:
        raise DataError(f"JSON-lines file {path} holds no examples")
    try:
        lengths = {len(x) for x in xs}
        if len(lengths) == 1:
            return {"x": np.asarray(xs), "y": np.asarray(ys)}
        x, length = pad_sequences(xs, dtype=np.result_type(*map(np.asarray, xs)))
        if all(isinstance(y, list) for y in ys):  # a tag per step
            y, y_length = pad_sequences(ys, dtype=np.result_type(*map(np.asarray, ys)))
            if not np.array_equal(length, y_length):
                row = int(np.argmax(length != y_length))
                raise DataError(
                    f"{path}: example {row + 1} has {length[row]} steps of x but "
                    f"{y_length[row]} of y"
                )
            return {"x": x, "y": y, "lengths": length}
        return {"x": x, "y": np.asarray(ys), "lengths": length}
    except (TypeError, ValueError) as error:
        raise DataError(
            f"{path}: examples must be lists of numbers of one shape: {error}"
        ) from None


def _split(path: str, arrays: dict[str, np.ndarray], suffix: str, task: str) -> Split:
    x, y = arrays[f"x{suffix}"], arrays[f"y{suffix}"]
    lengths = arrays.get(f"lengths{suffix}")
    for name, array in ((f"x{suffix}", x), (f"y{suffix}", y)):
        if array.ndim == 0 or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise DataError(
                f"{path}: {name} must be a numeric array, got {array.dtype} {array.shape}"
            )
    if len(x) != len(y):
        raise DataError(f"{path}: x{suffix} has {len(x)} rows but y{suffix} has {len(y)}")
    if lengths is not None:
        lengths = _lengths(path, f"lengths{suffix}", lengths, x)
    if task == "regress":
        if not np.isfinite(y).all():
            raise DataError(f"{path}: y{suffix} holds NaN or infinite targets")
        y = y.reshape(len(y), -1).astype(np.float32)
    else:
        y = _labels(path, f"y{suffix}", y)
    if task == "classify":
        y = _class_ids(path, f"y{suffix}", y)
    if task == "tag" and (x.ndim != 3 or y.shape != x.shape[:2]):
        raise DataError(
            f"{path}: a tagger takes x{suffix} of shape (N, steps, features) and y{suffix} of "
            f"(N, steps), one tag per step; got {x.shape} and {y.shape}"
        )
    if task == "language":
        x = _labels(path, f"x{suffix}", x)
    else:
        if not np.isfinite(x).all():
            raise DataError(f"{path}: x{suffix} holds NaN or infinite values")
        x = x.astype(np.float32)
    return Split(x, y, lengths)


def _labels(path: str, name: str, values: np.ndarray) -> np.ndarray:
    if not np.issubdtype(values.dtype, np.integer):
        whole = np.issubdtype(values.dtype, np.floating) and np.all(np.mod(values, 1) == 0)
        if not whole:
            raise DataError(f"{path}: {name} must hold integer labels, got {values.dtype}")
    if values.size and values.min() < 0:
        raise DataError(f"{path}: {name} holds negative labels (smallest {values.min()})")
    return values.astype(np.int32)


def _class_ids(path: str, name: str, y: np.ndarray) -> np.ndarray:
    """A classifier's `(N,)` labels; `(N, 1)` is taken as a column of them."""
    if y.ndim == 2 and y.shape[1] == 1:
        return y[:, 0]
    if y.ndim != 1:
        one_hot = y.ndim == 2 and np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()
        raise DataError(
            f"{path}: a classifier takes {name} of shape (N,), one class id per example; got "
            f"{y.shape}" + ("; it looks one-hot: save y.argmax(axis=1) instead" if one_hot else "")
        )
    return y


def _lengths(path: str, name: str, lengths: np.ndarray, x: np.ndarray) -> np.ndarray:
    if x.ndim < 2:
        raise DataError(f"{path}: {name} needs sequences x of shape (N, steps, ...), got {x.shape}")
    if lengths.shape != (len(x),) or not np.issubdtype(lengths.dtype, np.integer):
        raise DataError(
            f"{path}: {name} must be ({len(x)},) integers, got {lengths.dtype} {lengths.shape}"
        )
    if len(lengths) and (lengths.min() < 1 or lengths.max() > x.shape[1]):
        row = int(np.argmax((lengths < 1) | (lengths > x.shape[1])))
        raise DataError(
            f"{path}: {name}[{row}] is {lengths[row]}, outside 1..{x.shape[1]} (the padded steps)"
        )
    return lengths.astype(np.int32)


def _rows(split: Split, index: np.ndarray) -> Split:
    lengths = None if split.lengths is None else split.lengths[index]
    return Split(split.x[index], split.y[index], lengths)


def _check_shapes(path: str, splits: dict[str, Split]) -> None:
    train = splits["train"]
    for name, split in splits.items():
        if split.x.shape[1:] != train.x.shape[1:] or split.y.shape[1:] != train.y.shape[1:]:
            raise DataError(
                f"{path}: the {name} split maps {split.x.shape[1:]} to {split.y.shape[1:]}, "
                f"the training split {train.x.shape[1:]} to {train.y.shape[1:]}"
            )
        if (split.lengths is None) != (train.lengths is None) and len(split.x):
            raise DataError(f"{path}: lengths must be given for every split or for none")


def _output_width(path: str, splits: dict[str, Split], task: str) -> int:
    if task == "regress":
        return splits["train"].y.shape[1]
    arrays = [s.y for s in splits.values()] + (
        [s.x for s in splits.values()] * (task == "language")
    )
    width = max(int(a.max()) for a in arrays if a.size) + 1
    if task == "classify" and width < 2:
        raise DataError(f"{path}: y holds a single class; a classifier needs at least 2")
    return width
