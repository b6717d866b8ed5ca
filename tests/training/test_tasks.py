"""Language-model and forecasting tasks: losses against NumPy, and short real runs."""

import json
import math

import numpy as np
import pytest

from zoo import data, models
from zoo.data.batching import Batch
from zoo.data.text import load_text
from zoo.training import TrainConfig, create_train_state, evaluate, train_and_evaluate, train_step
from zoo.training.steps import compute_metrics


def numpy_cross_entropy(logits, labels):
    logits = logits - logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]


def test_language_metrics_count_every_token_of_unmasked_rows():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 5)).astype(np.float32)
    labels = rng.integers(0, 5, (3, 4)).astype(np.int32)
    mask = np.array([True, False, True])
    sums = compute_metrics("language", logits, Batch(np.zeros((3, 4)), labels, mask))
    expected = numpy_cross_entropy(logits, labels)[mask]
    assert float(sums["count"]) == 8
    assert float(sums["loss_sum"]) == pytest.approx(expected.sum(), rel=1e-5)
    correct = (logits.argmax(-1) == labels)[mask].sum()
    assert float(sums["correct"]) == correct


def test_regression_metrics_are_masked_mean_squared_error():
    outputs = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 3.0]], np.float32)
    targets = np.array([[0.0, 0.0], [9.0, 9.0], [3.0, 1.0]], np.float32)
    sums = compute_metrics("regress", outputs, Batch(None, targets, np.array([True, False, True])))
    assert float(sums["count"]) == 2
    assert float(sums["loss_sum"]) == pytest.approx((1 + 4) / 2 + (0 + 4) / 2)


def test_char_lm_learns_a_repetitive_text():
    text = "the cat sat on the mat. " * 200
    dataset = load_text(text=text, seq_len=16)
    model = models.create("charlm", num_classes=dataset.num_classes, hidden_sizes=(32,))
    config = TrainConfig(batch_size=16, learning_rate=1e-2)
    state = create_train_state(model, config, dataset.train.x[:1], "language")
    before = evaluate(state, dataset.validation, 16, dataset.num_classes)
    for epoch in range(4):
        for batch in data.batches(dataset.train, 16, seed=0, epoch=epoch):
            state, _ = train_step(state, batch)
    after = evaluate(state, dataset.validation, 16, dataset.num_classes)
    assert before["bpc"] == pytest.approx(before["loss"] / math.log(2))
    assert before["bpc"] > 3.0 and after["bpc"] < 1.0  # the text is nearly deterministic


def test_forecast_run_writes_mse_against_the_naive_forecast(tmp_path):
    pytest.importorskip("statsmodels")
    config = TrainConfig.for_model("forecast", epochs=2)
    results = train_and_evaluate(config, str(tmp_path), log=lambda line: None)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["task"] == "regress"
    assert written["naive_mse"] == pytest.approx(data.naive_forecast_mse(data.load_series().test))
    assert 0 < written["test_mse"] == results["test_mse"]
    assert "test_accuracy" not in written


def test_presets_pick_the_dataset_and_merge_options():
    config = TrainConfig.for_model("charlm", epochs=1, model_options={"embed_dim": 8})
    assert config.dataset == "text" and config.epochs == 1
    assert dict(config.model_options) == {"hidden_sizes": (256,), "embed_dim": 8}
    assert TrainConfig.for_model("lstm").dataset == "digits-seq"
    cnn = TrainConfig.for_model("cnn")
    assert cnn.dataset == "digits" and cnn.augment and cnn.patience
    assert TrainConfig.for_model("cnn", epochs=3, augment=()).augment == ()
