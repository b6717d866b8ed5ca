import numpy as np
import pytest

pytest.importorskip("statsmodels")

from zoo.data.series import load_series, naive_forecast_mse, sliding_windows, sunspots  # noqa: E402


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
