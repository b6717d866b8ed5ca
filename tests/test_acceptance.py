"""The issues' "done when" targets, as a user runs them: each model's preset, end to end.

Slow (the char LM trains for about a minute) but cheap next to what they guard.
"""

import dataclasses
import json

import numpy as np
import pytest

from zoo.training import TrainConfig, train_and_evaluate

pytestmark = [pytest.mark.slow, pytest.mark.optimized]


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
    """The preset's settings for 3 of its 10 epochs (the cosine decay over those 3): 2.41 bits
    per character on 2026-12-01 in 76 s of training (5 epochs: 2.06; unigram: 4.69). The whole
    preset's figure, 1.78, is the shipped weights' card, which tests/test_weights.py checks."""
    config = dataclasses.replace(TrainConfig.for_model("charlm"), epochs=3)
    results = train_and_evaluate(config, str(tmp_path), log=lambda line: None)
    assert results["test_bpc"] <= 2.5


def test_seed_cnn_on_a_png_folder_of_the_digits(tmp_path):
    """Issue 17: the digits written as 28x28 PNGs train as well as the bundled arrays."""
    pytest.importorskip("sklearn")
    pytest.importorskip("PIL")
    from zoo.data import load_digits
    from zoo.data.images import save_image_folder

    digits = load_digits()
    x = np.concatenate([split.x for split in digits[:3]])
    y = np.concatenate([split.y for split in digits[:3]])
    save_image_folder(tmp_path / "png", x, y, [str(label) for label in range(10)])
    config = TrainConfig(
        model="cnn", dataset="images", data_path=str(tmp_path / "png"), epochs=20,
        learning_rate=2e-3,
    )  # fmt: skip
    results = train_and_evaluate(config, str(tmp_path / "run"), log=lambda line: None)
    sizes = json.loads((tmp_path / "run" / "dataset.json").read_text())["sizes"]
    assert list(sizes.values()) == [len(split.x) for split in digits[:3]]
    assert results["test_accuracy"] >= 0.97


def test_a_cnn_family_preset_on_digits(tmp_path):
    """The CNN families' presets (issue 19): LeNet-5 with relu and max pooling, 0.9805 on
    2026-12-01 (README); the others are measured by benchmarks/presets.py, minutes each."""
    pytest.importorskip("sklearn")
    results = run("lenet5_relu", tmp_path)
    assert results["config"]["epochs"] == 20 and results["config"]["schedule"] == "cosine"
    assert results["test_accuracy"] >= 0.96
