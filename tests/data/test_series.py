import numpy as np
import pytest

pytest.importorskip("statsmodels")

from zoo.data import DataError, series  # noqa: E402
from zoo.data.series import (  # noqa: E402
    load_csv_series,
    load_series,
    naive_forecast_mse,
    sliding_windows,
    sunspots,
)


def test_sunspots_are_the_real_yearly_series():
    values = sunspots()
    assert values.shape == (309,)  # 1700-2008
    assert values[0] == 5.0 and values[1] == 11.0  # the first two years of the published table


def test_windows_and_targets():
    values = np.arange(20, dtype=np.float32)
    split = sliding_windows(values, window=3, horizon=2, start=10, end=20)
    np.testing.assert_array_equal(split.x[0, :, 0], [7, 8, 9])
    np.testing.assert_array_equal(split.y[0], [10, 11])
    assert split.y.max() == 19 and split.y.min() == 10  # targets stay inside [start, end)


def test_split_by_time_standardised_on_train_only():
    dataset = load_series(window=5)
    assert dataset.task == "regress" and dataset.input_shape == (5, 1)
    raw = sunspots()
    train_end = 309 - 2 * round(309 * 0.15)
    scaled = (raw - raw[:train_end].mean()) / raw[:train_end].std()
    np.testing.assert_allclose(dataset.test.y[-1, 0], scaled[-1], rtol=1e-5)
    np.testing.assert_allclose(dataset.validation.y[0, 0], scaled[train_end], rtol=1e-5)


def test_naive_forecast_mse_formula():
    split = sliding_windows(
        np.array([0, 1, 3, 6, 10], np.float32), window=2, horizon=1, start=0, end=5
    )
    # windows [0,1]->3, [1,3]->6, [3,6]->10: errors 2, 3, 4.
    assert naive_forecast_mse(split) == pytest.approx((4 + 9 + 16) / 3)


def _csv(tmp_path, text, name="series.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _ramp_csv(tmp_path, values, header="year,value", name="series.csv"):
    rows = "".join(f"{1900 + i},{v}\n" for i, v in enumerate(values))
    return _csv(tmp_path, f"{header}\n{rows}", name)


def test_a_csv_column_is_windowed_and_standardised_like_the_sunspots(tmp_path):
    values = np.sin(np.arange(120) / 5).astype(np.float32) * 10 + 50
    path = _ramp_csv(tmp_path, values)
    dataset = load_csv_series(path, column="value", window=6)
    expected = load_series(values=values, window=6)
    for got, want in zip(dataset[:3], expected[:3], strict=True):
        np.testing.assert_array_equal(got.x, want.x)
        np.testing.assert_array_equal(got.y, want.y)
    train = values[: 120 - 2 * 18]
    stats = {"mean": train.mean(), "std": train.std()}
    assert dataset.stats == pytest.approx(stats | {"column": "value"})
    # The only column besides the time column needs no --column; the stats name it.
    picked = load_csv_series(path, time_column="year", window=6)
    np.testing.assert_array_equal(picked.train.x, dataset.train.x)
    assert picked.stats["column"] == "value"


def test_given_stats_standardise_instead_of_the_training_part(tmp_path):
    values = np.arange(100, dtype=np.float32)
    dataset = load_csv_series(
        _ramp_csv(tmp_path, values), column="value", window=4, stats={"mean": 10, "std": 2}
    )
    assert dataset.stats == {"mean": 10.0, "std": 2.0, "column": "value"}
    np.testing.assert_allclose(dataset.test.y[-1], [(99 - 10) / 2])


@pytest.mark.parametrize(
    "times",
    [
        [1, 2, 3, 9, 10, 11, 20, 100, 0.5, -4],
        [f"2024-{m:02d}-{d:02d}" for m in (1, 2, 11) for d in (1, 9, 10)] + ["2023-12-31"],
    ],
)
def test_numbers_sort_as_numbers_and_one_form_of_text_as_written(tmp_path, times):
    shuffled = np.random.default_rng(1).permutation(len(times))
    rows = "".join(f"{times[i]},{i}\n" for i in shuffled)
    path = _csv(tmp_path, "t,v\n" + rows)
    got = series.load_csv_values(path, time_column="t")
    ranks = sorted(range(len(times)), key=times.__getitem__)  # numbers, or strings
    np.testing.assert_array_equal(got, ranks)


def test_rows_are_sorted_by_the_time_column(tmp_path):
    values = np.arange(60, dtype=np.float32) ** 1.5
    rows = [f"2020-01-{i:02d}T00:00,{v}" for i, v in enumerate(values)]
    shuffled = [rows[i] for i in np.random.default_rng(0).permutation(60)]
    path = _csv(tmp_path, "when,load\n" + "\n".join(shuffled) + "\n")
    dataset = load_csv_series(path, column="load", time_column="when", window=4)
    np.testing.assert_array_equal(dataset.train.x, load_series(values=values, window=4).train.x)


@pytest.mark.parametrize(
    "missing, expected",
    [
        ("interpolate", [1, 2, 3, 4, 5, 6, 6.5, 7]),
        ("ffill", [1, 2, 2, 4, 5, 6, 6, 7]),
        ("drop", [1, 2, 4, 5, 6, 7]),
    ],
)
def test_missing_values_are_filled_as_asked(tmp_path, missing, expected):
    path = _ramp_csv(tmp_path, ["", "1", "2", "NaN", "4", "5", "6", "", "7"])
    filled = series.load_csv_values(path, missing=missing, time_column="year")
    if missing == "interpolate":  # the leading gap takes the nearest value
        expected = [1, *expected]
    np.testing.assert_allclose(filled, expected)


@pytest.mark.parametrize(
    "text, options, message",
    [
        ("t,v\n1,2\n2,3\n", {"column": "w"}, r"column 'w' is not in .*; its columns are: t, v"),
        ("t,v,w\n1,2,3\n", {}, "has columns t, v, w: choose one with column"),
        ("t,v\n1,2\n2,abc\n", {"column": "v"}, r"line 3 column 'v': 'abc' is not a number"),
        ("t,v\n1,2\n2,\n3,4\n", {"column": "v"}, "line 3 column 'v' is missing .*--missing"),
        ("t,v\n1,2\n2\n", {"column": "v"}, "line 3 has 1 cells; the header has 2"),
        ("t,v\n1,2\n1,3\n", {"column": "v", "time_column": "t"}, "lines 2 and 3 have the same"),
        ("t,v\n1,2\n", {"column": "v", "time_column": "x"}, "time_column 'x' is not in"),
        ("t,v\n1,1\n2,2\n10,3\n,4\n", {"time_column": "t"}, "line 5 column 't': the time is"),
        ("t,v\n1,1\nNA,2\n", {"time_column": "t"}, "line 3 column 't': the time is missing"),
        (
            "t,v\n1,1\n2,2\nMay,3\n10,4\n",
            {"time_column": "t"},
            r"line 4 column 't': 'May' is not a number, as the times before it are \(line 2",
        ),
        (
            "t,v\n2024-01-02,1\n2024-01-03,2\n2024-1-4,3\n",
            {"time_column": "t"},
            r"line 4 column 't': '2024-1-4' does not have the form of line 2's '2024-01-02'",
        ),
        ("t,v\nx,1\n7,2\n", {"time_column": "t"}, "line 3 column 't': '7' does not have the form"),
        ("", {}, "is empty"),
        ("t,v\n", {}, "a header and no rows"),
        ("t,v\n1,2\n2,3\n", {"column": "v"}, "fewer than window 24"),
        ("t,v\n1,\n2,\n", {"column": "v", "missing": "drop"}, "has no values"),
    ],
)
def test_bad_csv_files_are_named(tmp_path, text, options, message):
    path = _csv(tmp_path, text)
    with pytest.raises(DataError, match=message) as error:
        load_csv_series(path, **options)
    assert str(path) in str(error.value)
