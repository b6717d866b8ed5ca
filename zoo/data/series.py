"""Series for forecasting: yearly sunspot numbers 1700-2008 (309 values, shipped inside
statsmodels), or a column of the user's CSV file.

`pip install 'zoo[series]'` for the sunspots; CSVs are read with the standard library, without
pandas. A series is split by time (70/15/15), standardised with the training part's mean and
deviation (kept in the dataset's `stats`), and cut into sliding windows of `window` steps whose
target is the next `horizon` steps.
"""

import csv
import importlib.util
import math
import os
import re

import numpy as np

from zoo.data.splits import DataError, Dataset, Split, split_sizes

# What `missing` may say to do with empty or NaN cells of a CSV column.
MISSING = ("error", "interpolate", "ffill", "drop")
_MISSING_CELLS = {"", "na", "nan", "n/a", "null", "none"}


def sunspots() -> np.ndarray:
    """The raw yearly series `(309,)` float32."""
    spec = importlib.util.find_spec("statsmodels")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the series dataset ships with statsmodels: pip install 'zoo[series]'")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "sunspots", "sunspots.csv")
    table = np.genfromtxt(path, delimiter=",", names=True, dtype=np.float64)
    values = table["SUNACTIVITY"].astype(np.float32)
    if not np.isfinite(values).all():
        raise ValueError(f"{path} holds NaN or infinite values")
    return values


def load_series(
    *,
    window: int = 24,
    horizon: int = 1,
    validation: float = 0.15,
    test: float = 0.15,
    values: np.ndarray | None = None,
    stats: dict[str, float] | None = None,
) -> Dataset:
    """Sliding windows `x (N, window, 1)` and targets `y (N, horizon)` of the sunspots (or of
    `values`), standardised by the training part's `stats` `mean` and `std`, or by those of
    `stats` (a trained run's, to evaluate it on new values)."""
    values = sunspots() if values is None else np.asarray(values, np.float32)
    n_train, n_val, _ = split_sizes(len(values), validation=validation, test=test)
    if n_train < window + horizon:
        raise DataError(
            f"a series of {len(values)} values has {n_train} for training, fewer than window "
            f"{window} + horizon {horizon}"
        )
    train_end, val_end = n_train, n_train + n_val
    mean, std = _mean_std(values[:train_end], stats)
    if std == 0:
        raise DataError(f"the training part of the series is constant ({mean}): nothing to learn")
    scaled = (values - mean) / std
    # Validation and test windows may look back into the previous part; their targets never do.
    splits = [
        sliding_windows(scaled, window, horizon, start, end)
        for start, end in ((0, train_end), (train_end, val_end), (val_end, len(values)))
    ]
    return Dataset(*splits, num_classes=horizon, task="regress", stats={"mean": mean, "std": std})


def _mean_std(train: np.ndarray, stats: dict[str, float] | None) -> tuple[float, float]:
    if stats is not None:
        return float(stats["mean"]), float(stats["std"])
    return float(train.mean()), float(train.std())


def load_csv_series(
    path: str | os.PathLike,
    *,
    column: str | None = None,
    time_column: str | None = None,
    missing: str = "error",
    **options: float,
) -> Dataset:
    """`load_series` on one numeric column of a CSV file with a header row.

    Args:
      column: the column to forecast; None: the file's only column besides `time_column`.
      time_column: rows are sorted by this column: numbers numerically, or text of one
        fixed-width form, such as ISO dates, as written. An empty time, a mix of numbers and text,
        a text of another form than the first row's, or two rows at one time are errors that name
        the line. None: the file's order.
      missing: what empty or NaN cells do: 'error' (names the first one's line), 'interpolate'
        (linearly between neighbours, the nearest value at the ends), 'ffill' (the last value
        before; leading gaps are dropped) or 'drop' (the rows go).
      **options: `window`, `horizon`, `validation`, `test`, `stats` as for `load_series`.

    The dataset's `stats` also name the `column` read, which a trained run reads of new files.
    """
    values, column = _read_column(os.fspath(path), column, time_column, missing)
    try:
        dataset = load_series(values=values, **options)
    except DataError as error:
        raise DataError(f"{os.fspath(path)}: {error}") from None
    return dataset._replace(stats={**dataset.stats, "column": column})


def load_csv_values(
    path: str | os.PathLike,
    *,
    column: str | None = None,
    time_column: str | None = None,
    missing: str = "error",
) -> np.ndarray:
    """The `(N,)` float32 values of one CSV column, sorted and filled as `load_csv_series` says."""
    return _read_column(os.fspath(path), column, time_column, missing)[0]


def _read_column(
    path: str, column: str | None, time_column: str | None, missing: str
) -> tuple[np.ndarray, str]:
    """`load_csv_values`, and the name of the column it read."""
    if missing not in MISSING:
        raise DataError(f"missing must be one of {', '.join(MISSING)}, got {missing!r}")
    header, rows = _read_csv(path)
    column = _pick_column(path, header, column, time_column)
    lines = [line for line, _ in rows]
    at = header.index(column)
    values = np.array([_number(path, line, column, row[at]) for line, row in rows])
    if time_column is not None:
        if time_column not in header:
            raise DataError(_no_column(path, "time_column", time_column, header))
        times = [row[header.index(time_column)] for _, row in rows]
        order = _time_order(path, lines, times, time_column)
        values, lines = values[order], [lines[i] for i in order]
    return _fill(path, values, lines, column, missing), column


def _read_csv(path: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the `(line number, cells)` of each non-empty row."""
    if not os.path.isfile(path):
        raise DataError(f"CSV file {path!r} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            table = [(reader.line_num, row) for reader in [csv.reader(f)] for row in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path} is not a readable CSV file: {error}") from None
    table = [(line, row) for line, row in table if any(cell.strip() for cell in row)]
    if not table:
        raise DataError(f"CSV file {path} is empty")
    (_, header), rows = table[0], table[1:]
    header = [name.strip() for name in header]
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(
                f"{path} line {line} has {len(row)} cells; the header has {len(header)}"
            )
    if not rows:
        raise DataError(f"CSV file {path} has a header and no rows")
    return header, rows


def _pick_column(path: str, header: list[str], column: str | None, time_column: str | None) -> str:
    if column is not None:
        if column not in header:
            raise DataError(_no_column(path, "column", column, header))
        return column
    candidates = [name for name in header if name != time_column]
    if len(candidates) != 1:
        raise DataError(
            f"{path} has columns {', '.join(header)}: choose one with column (--column NAME)"
        )
    return candidates[0]


def _no_column(path: str, field: str, name: str, header: list[str]) -> str:
    return f"{field} {name!r} is not in {path}; its columns are: {', '.join(header)}"


def _number(path: str, line: int, column: str, cell: str) -> float:
    text = cell.strip()
    if text.lower() in _MISSING_CELLS:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path} line {line} column {column!r}: {cell!r} is not a number") from None
    if math.isinf(value):
        raise DataError(f"{path} line {line} column {column!r}: {cell!r} is infinite")
    return value


def _time_order(path: str, lines: list[int], times: list[str], column: str) -> np.ndarray:
    """The order of the rows by their times: numbers numerically, or text (such as ISO dates)
    as written, when every time has the form of the first row's."""
    keys = _time_keys(path, lines, [t.strip() for t in times], column)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    for a, b in zip(order, order[1:], strict=False):
        if keys[a] == keys[b]:
            raise DataError(
                f"{path} lines {lines[a]} and {lines[b]} have the same time {times[a]!r}"
            )
    return np.array(order)


def _time_keys(path: str, lines: list[int], times: list[str], column: str) -> list:
    """Sort keys of `times`: floats when the first is a number, else the texts themselves."""
    for line, time in zip(lines, times, strict=True):
        if time.lower() in _MISSING_CELLS:
            raise DataError(f"{path} line {line} column {column!r}: the time is missing")
    numbers = [_finite(time) for time in times]
    if numbers[0] is not None:
        for line, time, number in zip(lines, times, numbers, strict=True):
            if number is None:
                raise DataError(
                    f"{path} line {line} column {column!r}: {time!r} is not a number, as the "
                    f"times before it are (line {lines[0]}: {times[0]!r})"
                )
        return numbers
    form = _form(times[0])
    for line, time in zip(lines, times, strict=True):
        if _form(time) != form:
            raise DataError(
                f"{path} line {line} column {column!r}: {time!r} does not have the form of line "
                f"{lines[0]}'s {times[0]!r}; times that are not numbers sort as text, so they "
                "need one fixed-width form, such as ISO dates 2024-01-31"
            )
    return times


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _form(time: str) -> str:
    """`time` with every digit a 0: texts of one form sort by the numbers in them."""
    return re.sub(r"[0-9]", "0", time)


def _fill(path: str, values: np.ndarray, lines: list[int], column: str, missing: str) -> np.ndarray:
    gaps = np.isnan(values)
    if not gaps.any():
        return values.astype(np.float32)
    if missing == "error":
        first = lines[int(np.argmax(gaps))]
        raise DataError(
            f"{path} line {first} column {column!r} is missing ({int(gaps.sum())} missing in "
            f"all); choose --missing interpolate, ffill or drop"
        )
    if gaps.all():
        raise DataError(f"{path} column {column!r} has no values")
    known = np.flatnonzero(~gaps)
    if missing == "interpolate":
        values = np.interp(np.arange(len(values)), known, values[known])
    elif missing == "ffill":
        last = np.maximum.accumulate(np.where(gaps, -1, np.arange(len(values))))
        values = values[last[known[0] :]]
    else:
        values = values[known]
    return values.astype(np.float32)


def sliding_windows(values: np.ndarray, window: int, horizon: int, start: int, end: int) -> Split:
    """Windows whose targets `values[t : t + horizon]` all lie in `[start, end)`."""
    targets = range(max(start, window), end - horizon + 1)
    x = np.stack([values[t - window : t] for t in targets])[..., None]
    y = np.stack([values[t : t + horizon] for t in targets])
    return Split(x.astype(np.float32), y.astype(np.float32))


def naive_forecast_mse(split: Split) -> float:
    """MSE of repeating each window's last value over the horizon: the baseline to beat."""
    return float(np.mean(np.square(split.y - split.x[:, -1, :1])))
