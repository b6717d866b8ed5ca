"""The pretrained weights in the package: each reproduces its card, and tampering is refused."""

import os
import shutil

import numpy as np
import pytest

import zoo
from zoo import data
from zoo.training.metrics import mean_image_mse
from zoo.weights import METRICS, WEIGHTS, WeightsError, read_variables

pytest.importorskip("sklearn")
pytest.importorskip("statsmodels")

# At least the README's preset results (a card can only be built from a run that reached them).
FLOORS = {
    "test_accuracy": 0.975,
    "test_bpc": 1.85,  # at most
    "test_elbo": -300.0,
}
# Models whose presets reach less (the README's table): LeNet-5 as published, tanh and average
# pooling; the ConvLSTM on 8x8 moving digits.
ACCURACY_FLOORS = {"lenet5": 0.97, "convlstm": 0.95}


def test_every_model_with_a_bundled_dataset_ships_weights_under_a_few_mb():
    cards = zoo.pretrained()
    assert set(cards) == set(METRICS)
    size = sum(os.path.getsize(os.path.join(WEIGHTS, f"{n}.safetensors")) for n in cards)
    assert size < 8e6
    for name, card in cards.items():
        assert card["command"] == f"python train.py --model {name} --seed 0"
        assert card["value"] == card["metrics"][card["metric"]]


@pytest.mark.parametrize("name", sorted(METRICS))
def test_shipped_weights_give_their_cards_metric_on_the_test_split(name):
    trained = zoo.pretrained(name)
    card = zoo.pretrained()[name]
    dataset = data.load(trained.config.dataset, seed=trained.config.seed, task=trained.task)
    metrics = {f"test_{k}": v for k, v in trained.evaluate(dataset.test).items()}
    if "test_accuracy" in card["metrics"]:
        n = len(dataset.test.y)
        assert round(metrics["test_accuracy"] * n) == round(card["metrics"]["test_accuracy"] * n)
        floor = 0.99 if name == "cnn" else ACCURACY_FLOORS.get(name, FLOORS["test_accuracy"])
        assert card["value"] >= floor
    for key, value in card["metrics"].items():
        assert metrics[key] == pytest.approx(value, rel=1e-5), key
    if name == "charlm":
        assert card["value"] <= FLOORS["test_bpc"]
    if name in ("forecast", "tcn_forecast"):
        assert card["value"] < data.naive_forecast_mse(dataset.test)
    if name == "autoencoder":  # far below predicting the mean image
        assert card["value"] < 0.2 * mean_image_mse(dataset.train, dataset.test)
    if name == "vae":
        assert card["value"] >= FLOORS["test_elbo"]


@pytest.fixture
def weights_copy(tmp_path, monkeypatch):
    for name in ("cnn", "lstm"):
        for suffix in (".safetensors", ".json"):
            shutil.copy(os.path.join(WEIGHTS, name + suffix), tmp_path)
    monkeypatch.setattr("zoo.weights.WEIGHTS", str(tmp_path))
    return tmp_path


def test_an_altered_weight_file_is_refused(weights_copy):
    path = weights_copy / "cnn.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match=r"cnn.safetensors has sha256 .* the file was altered"):
        zoo.pretrained("cnn")


def test_a_weight_file_for_another_model_lists_the_leaves_that_differ(weights_copy):
    like = zoo.pretrained("cnn").variables
    with pytest.raises(WeightsError, match=r"does not fit .* leaves differ\): params/"):
        read_variables(str(weights_copy / "lstm.safetensors"), like)
    with pytest.raises(WeightsError, match="no pretrained weights for 'resnet'"):
        zoo.pretrained("resnet")


def test_pretrained_weights_start_a_fine_tuning_run_with_a_new_head():
    from zoo.training import TrainConfig, create_train_state
    from zoo.training.loop import initialize_from_run
    from zoo.training.state import model_for

    config = TrainConfig(model="cnn", init_from="pretrained")
    state = create_train_state(model_for(config, 3, (28, 28, 1)), config, np.zeros((1, 28, 28, 1)))
    lines = []
    started = initialize_from_run(state, config, lines.append)
    trained = zoo.pretrained("cnn")
    assert "initialised from pretrained" in lines[0] and "fresh for a new shape" in lines[0]
    shipped = trained.variables["params"]
    kept = [n for n in shipped if np.array_equal(started.params[n]["kernel"], shipped[n]["kernel"])]
    assert len(kept) == len(trained.variables["params"]) - 1  # all but the head
