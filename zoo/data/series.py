"""Yearly sunspot numbers, 1700-2008 (309 values), as shipped inside statsmodels.

`pip install 'zoo[series]'`; the CSV is read directly, without pandas. The series is split by time
(70/15/15), standardised with the training part's mean and deviation, and cut into sliding windows
of `window` years whose target is the next `horizon` years.
"""

import importlib.util
import os

import numpy as np

from zoo.data.splits import Dataset, Split, split_sizes


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
    *, window: int = 24, horizon: int = 1, validation: float = 0.15, test: float = 0.15
) -> Dataset:
    """Sliding windows `x (N, window, 1)` and targets `y (N, horizon)`, standardised."""
    values = sunspots()
    n_train, n_val, _ = split_sizes(len(values), validation=validation, test=test)
    train_end, val_end = n_train, n_train + n_val
    mean, std = values[:train_end].mean(), values[:train_end].std()
    scaled = (values - mean) / std
    # Validation and test windows may look back into the previous part; their targets never do.
    splits = [
        sliding_windows(scaled, window, horizon, start, end)
        for start, end in ((0, train_end), (train_end, val_end), (val_end, len(values)))
    ]
    return Dataset(*splits, num_classes=horizon, task="regress")


def sliding_windows(values: np.ndarray, window: int, horizon: int, start: int, end: int) -> Split:
    """Windows whose targets `values[t : t + horizon]` all lie in `[start, end)`."""
    targets = range(max(start, window), end - horizon + 1)
    x = np.stack([values[t - window : t] for t in targets])[..., None]
    y = np.stack([values[t : t + horizon] for t in targets])
    return Split(x.astype(np.float32), y.astype(np.float32))


def naive_forecast_mse(split: Split) -> float:
    """MSE of repeating each window's last value over the horizon: the baseline to beat."""
    return float(np.mean(np.square(split.y - split.x[:, -1, :1])))
