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
    ],
)
def test_bad_values_are_rejected_with_the_field_name(values, field):
    with pytest.raises(ConfigError, match=f"^{field} must"):
        TrainConfig(**values)


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match="unknown config key epoch, lr"):
        TrainConfig.from_dict({"epoch": 3, "lr": 0.1})


def test_round_trip_through_dict():
    config = TrainConfig(epochs=3, model_options={"features": (8,)})
    assert TrainConfig.from_dict(config.to_dict()) == config
