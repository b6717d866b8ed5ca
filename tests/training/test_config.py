import json

import pytest

from zoo.training import ConfigError, TrainConfig


@pytest.mark.parametrize(
    "values, field",
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"momentum": 1.0}, "momentum"),
        ({"optimizer": "adagrad"}, "optimizer"),
        ({"model": 3}, "model"),
        ({"data_path": 3}, "data_path"),
        ({"model_options": ["features"]}, "model_options"),
        ({"optimizer": "adamax"}, "optimizer"),
        ({"nesterov": 1}, "nesterov"),
        ({"schedule": "linear"}, "schedule"),
        ({"schedule": "warmup_cosine"}, "warmup_steps"),
        ({"warmup_steps": 10}, "warmup_steps"),
        ({"schedule": "warmup_cosine", "warmup_steps": -1}, "warmup_steps"),
        ({"decay_rate": 0.0}, "decay_rate"),
        ({"decay_rate": 1.5}, "decay_rate"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"clip_norm": float("inf")}, "clip_norm"),
        ({"l1": -1e-4}, "l1"),
        ({"l2": float("nan")}, "l2"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"regularize": "biases"}, "regularize"),
        ({"augment": ("blur",)}, "augment"),
        ({"augment": ("shift", "shift")}, "augment"),
        ({"augment": "shift"}, "augment"),
        ({"patience": -1}, "patience"),
        ({"patience": 2.0}, "patience"),
        ({"min_delta": -0.01}, "min_delta"),
        ({"monitor": "val_auc"}, "monitor"),
        ({"seed": None}, "seed"),
    ],
)
def test_bad_values_are_rejected_with_the_field_name(values, field):
    with pytest.raises(ConfigError, match=f"^{field} (must|is only|lists)"):
        TrainConfig(**values)


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match="unknown config key epoch, lr"):
        TrainConfig.from_dict({"epoch": 3, "lr": 0.1})


def test_round_trip_through_dict():
    config = TrainConfig(epochs=3, model_options={"features": (8,)})
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_round_trip_through_json_keeps_tuples():
    config = TrainConfig(augment=("shift", "rotate"), patience=3, schedule="cosine")
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_weight_decay_defaults_per_optimizer():
    assert TrainConfig(optimizer="adamw").decay == 1e-4
    assert TrainConfig(optimizer="adam").decay == 0.0
    assert TrainConfig(optimizer="sgd", weight_decay=0.01).decay == 0.01


def test_patience_zero_turns_early_stopping_off():
    assert TrainConfig(patience=0).patience is None
    assert TrainConfig(patience=0) == TrainConfig()  # a resumed run's saved config compares equal
    assert TrainConfig.for_model("cnn", patience=0).patience is None  # the preset's 15 switched off
    with pytest.raises(ConfigError, match=r"patience must be >= 0 \(0: no early stopping\)"):
        TrainConfig(patience=-1)
