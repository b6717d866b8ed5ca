"""The issues' "done when" targets, as a user runs them: each model's preset, end to end.

Slow (the char LM trains for about two minutes) but cheap next to what they guard.
"""

import pytest

from zoo.training import TrainConfig, train_and_evaluate

pytestmark = pytest.mark.slow


def run(model: str, tmp_path) -> dict:
    return train_and_evaluate(TrainConfig.for_model(model), str(tmp_path), log=lambda line: None)


def test_seed_cnn_on_digits_with_augmentation_and_early_stopping(tmp_path):
    pytest.importorskip("sklearn")
    results = run("cnn", tmp_path)
    assert results["config"]["augment"] and results["config"]["patience"]
    assert results["epochs"] < results["config"]["epochs"]  # early stopping did stop it
    assert results["test_accuracy"] >= 0.985


def test_lstm_on_digit_rows(tmp_path):
    pytest.importorskip("sklearn")
    results = run("lstm", tmp_path)
    assert results["test_accuracy"] >= 0.975


def test_forecaster_beats_the_naive_forecast(tmp_path):
    pytest.importorskip("statsmodels")
    results = run("forecast", tmp_path)
    assert results["test_mse"] < results["naive_mse"]


def test_char_lm_on_cpython_prose(tmp_path):
    results = run("charlm", tmp_path)
    assert results["test_bpc"] <= 1.8
